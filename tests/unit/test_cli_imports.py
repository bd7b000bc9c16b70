"""The CLI stays light: importing it loads neither the server side nor heavy libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

FORBIDDEN = (
    "aiohttp",
    "llama_cpp",
    "lms.daemon",
    "lms.api",
    "lms.inference",
    "lms.mcp",
    "lms.download",
    "gguf",
    "yarl",
)


def _loaded_after(code: str, *args: str) -> list[str]:
    probe = f"import sys\n{code}\nimport json\nprint(json.dumps(sorted(sys.modules)))\n"
    with tempfile.TemporaryDirectory(prefix="lms") as home:
        done = subprocess.run(
            [sys.executable, "-c", probe, *args],
            capture_output=True,
            text=True,
            env=dict(os.environ, LMS_HOME=home),
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return modules


def _forbidden(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]


def test_importing_the_cli_loads_no_server_side_module() -> None:
    modules = _loaded_after("import lms.cli")
    assert "lms.cli" in modules
    assert _forbidden(modules) == []


def test_running_a_command_loads_no_server_side_module() -> None:
    # `lms config list` runs a whole command (Typer parsing, settings, rendering).
    code = (
        "import lms.cli, io, contextlib\n"
        "sys.argv = ['lms', 'config', 'list']\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        lms.cli.main()\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), exc.code\n"
    )
    modules = _loaded_after(code)
    assert "lms.cli.config" in modules
    assert _forbidden(modules) == []


def test_python_dash_m_lms_is_the_cli() -> None:
    with tempfile.TemporaryDirectory(prefix="lms") as home:
        done = subprocess.run(
            [sys.executable, "-m", "lms", "--version"],
            capture_output=True,
            text=True,
            env=dict(os.environ, LMS_HOME=home),
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    import lms

    assert done.stdout.strip() == f"lms {lms.__version__}"


def test_completion_values_load_neither_typer_nor_rich() -> None:
    # `lms __complete ...` runs at every TAB: the launcher answers it before Typer is imported.
    code = (
        "import io, contextlib\n"
        "from lms import launcher\n"
        "sys.argv = ['lms', '__complete', 'tokens']\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        launcher.main()\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
    )
    modules = _loaded_after(code)
    assert "lms.completion" in modules
    heavy = ("typer", "rich", "lms.cli", "click", "http.client")
    assert [m for m in modules if m.split(".")[0] in heavy or m in heavy] == []
    # The registry's reader only: the audit log (settings, and the refusal log with asyncio) is
    # imported by the registry's writes.
    assert "lms.auth.registry" in modules
    reader_only = ("lms.auth.audit", "lms.auth.refusals", "lms.config", "asyncio", "tomllib")
    assert [m for m in modules if m in reader_only] == []
    assert _forbidden(modules) == []


def test_version_loads_neither_typer_nor_rich_nor_the_cli() -> None:
    # `lms --version` alone is answered by the launcher, with the root callback's very line.
    code = (
        "import io, contextlib\n"
        "from lms import launcher\n"
        "sys.argv = ['lms', '--version']\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        "        launcher.main()\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "import lms\n"
        "assert out.getvalue() == f'lms {lms.__version__}\\n', out.getvalue()\n"
    )
    modules = _loaded_after(code)
    heavy = ("typer", "rich", "click", "pydantic", "lms.cli")
    assert [m for m in modules if any(m == h or m.startswith(h + ".") for h in heavy)] == []


def test_a_command_without_values_to_coerce_loads_no_pydantic() -> None:
    # Typer builds a pydantic adapter only for a value that is there (lms/cli/coercion.py):
    # `lms token list` (flags only, left out) never imports pydantic, nor rich on a pipe, nor
    # the daemon's client (http.client): the command modules import it in the commands using it.
    code = (
        "import io, contextlib\n"
        "from lms import launcher\n"
        "sys.argv = ['lms', 'token', 'list']\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        launcher.main()\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), exc.code\n"
    )
    modules = _loaded_after(code)
    assert "lms.cli.token" in modules
    light = ("pydantic", "rich", "http", "email", "ssl", "lms.client", "lms.starter")
    assert [m for m in modules if any(m == h or m.startswith(h + ".") for h in light)] == []
    assert _forbidden(modules) == []


def _version_run(entry: str, stdout: str) -> tuple[int, bytes]:
    """``lms --version`` through ``entry`` with stdout closed or a pipe nobody reads."""
    code = f"import sys\nsys.argv = ['lms', '--version']\nfrom {entry} import main\nmain()\n"
    with tempfile.TemporaryDirectory(prefix="lms") as home:
        env = dict(os.environ, LMS_HOME=home)
        if stdout == "closed":
            # The shell closes fd 1 before exec, as `lms --version >&-` does: no sys.stdout.
            done = subprocess.run(
                ["/bin/sh", "-c", 'exec "$0" -c "$1" >&-', sys.executable, code],
                stderr=subprocess.PIPE,
                env=env,
                timeout=60,
                check=False,
            )
            return done.returncode, done.stderr
        reader, writer = os.pipe()
        os.close(reader)  # the reader is gone before the command writes: EPIPE, every time
        try:
            done = subprocess.run(
                [sys.executable, "-c", code],
                stdout=writer,
                stderr=subprocess.PIPE,
                env=env,
                timeout=60,
                check=False,
            )
        finally:
            os.close(writer)
        return done.returncode, done.stderr


def test_the_launchers_version_ends_as_typers_does() -> None:
    # No stdout: nothing and exit 0; a reader gone: exit 1 and no traceback, as Typer ends it.
    for stdout in ("closed", "broken pipe"):
        fast = _version_run("lms.launcher", stdout)
        typer_app = _version_run("lms.cli", stdout)
        assert fast == typer_app, (stdout, fast, typer_app)
    assert _version_run("lms.launcher", "closed") == (0, b"")
    assert _version_run("lms.launcher", "broken pipe") == (1, b"")
