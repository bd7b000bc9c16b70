"""The committed completion scripts, man pages and README reference are what the code writes.

They are regenerated into a temporary directory, in a fresh interpreter with an unusual
environment (another HOME, LMS_HOME and XDG dirs, a narrow terminal), and compared byte for byte.
A failure here means: run `make generate` (python -m lms.cli.docgen) and commit the result.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from lms import config
from lms.cli import app
from lms.cli.docgen import examples, manpage, reference, tree
from lms.errors import EXIT_CODE_MEANINGS

ROOT = Path(__file__).resolve().parents[2]
GENERATED_DIRS = ("completions", "man")


def _generate_into(target: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", target / "pyproject.toml")
    shutil.copy(ROOT / "README.md", target / "README.md")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(target / "elsewhere"),
        "LMS_HOME": str(target / "lms-home"),
        "XDG_CONFIG_HOME": str(target / "xdg-config"),
        "XDG_DATA_HOME": str(target / "xdg-data"),
        "XDG_STATE_HOME": str(target / "xdg-state"),
        "LMS_SERVER_PORT": "4321",
        "COLUMNS": "37",
        "LANG": "C",
        # The lms under test (a work tree may put its own first on the path).
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-m", "lms.cli.docgen", "--root", str(target)],
        cwd=target,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_regenerated_files_are_byte_for_byte_the_committed_ones(tmp_path: Path) -> None:
    _generate_into(tmp_path)
    for folder in GENERATED_DIRS:
        made = sorted(p.name for p in (tmp_path / folder).iterdir())
        committed = sorted(p.name for p in (ROOT / folder).iterdir())
        assert made == committed, f"{folder}/ differs: run make generate"
        for name in made:
            new, old = (tmp_path / folder / name).read_bytes(), (ROOT / folder / name).read_bytes()
            assert new == old, f"{folder}/{name} is out of date: run make generate"
    # Only the reference block of the README is generated; the rest is the authors'.
    new_block = reference.extract((tmp_path / "README.md").read_text())
    assert new_block is not None
    assert new_block == reference.extract((ROOT / "README.md").read_text()), (
        "README.md's command reference is out of date: run make generate"
    )


def test_check_mode_reports_a_drifted_file(tmp_path: Path) -> None:
    _generate_into(tmp_path)
    check = [sys.executable, "-m", "lms.cli.docgen", "--check", "--root", str(tmp_path)]
    assert subprocess.run(check, capture_output=True, timeout=120, check=False).returncode == 0
    page = tmp_path / "man" / "lms-token.1"
    page.write_text(page.read_text().replace("Revoke", "Delete"))
    (tmp_path / "man" / "lms-gone.1").write_text(".TH GONE 1\n")
    done = subprocess.run(check, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert "out of date: man/lms-token.1" in done.stderr
    assert "out of date: man/lms-gone.1" in done.stderr


# --- man pages ----------------------------------------------------------------------------------


def _pages() -> list[Path]:
    return sorted((ROOT / "man").glob("*.1"))


def test_one_page_for_lms_and_each_command_group() -> None:
    root = tree.build()
    groups = [c.path[-1] for c in root.visible_subcommands() if c.is_group]
    assert {p.name for p in _pages()} == {"lms.1", *(f"lms-{g}.1" for g in groups)}
    assert set(examples.EXAMPLES) == {"", *groups}, "every page needs EXAMPLES"


@pytest.mark.parametrize("device", ["ps", "utf8", "ascii"])
def test_groff_renders_every_page_without_a_warning(device: str) -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (apt-get install groff-base)")
    pages = [str(p) for p in _pages()]
    done = subprocess.run(
        ["groff", "-ww", "-z", "-man", f"-T{device}", *pages],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stderr == ""


@pytest.mark.parametrize("width", ["80", "50"])
def test_man_renders_every_page_without_a_warning(width: str) -> None:
    if shutil.which("man") is None:
        pytest.skip("man is not installed (apt-get install man-db)")
    env = dict(os.environ, MANWIDTH=width)
    for page in _pages():
        done = subprocess.run(
            ["man", "--warnings=all", "-l", str(page)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == "", f"{page.name}: {done.stderr}"
        assert "SYNOPSIS" in re.sub(".\x08", "", done.stdout)  # without overstriking


def test_every_page_has_the_sections_and_no_path_of_this_machine() -> None:
    sections = ["NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "ENVIRONMENT", "FILES"]
    sections += ['"EXIT STATUS"', "EXAMPLES", '"SEE ALSO"']
    for page in _pages():
        text = page.read_text()
        headings = re.findall(r"^\.SH (.+)$", text, re.MULTILINE)
        for section in sections:
            assert section in headings, f"{page.name} has no {section}"
        assert str(Path.home()) not in text and str(ROOT) not in text
        assert "/tmp" not in text and "@HOME@" not in text
        assert re.search(r"\d{4}-\d{2}-\d{2}", text.split("\n.SH")[0]) is None  # no date
        for code, meaning in EXIT_CODE_MEANINGS.items():
            assert f"\\fB{int(code)}\\fR" in text and manpage.escape(meaning[1:]) in text
        for spec in config.SETTINGS.values():
            if spec.env_var:
                assert manpage.escape(spec.env_var) in text
        for name in ("LMS_HOME", "NO_COLOR", "LM_API_TOKEN"):
            assert manpage.escape(name) in text
        for default, relocated, _ in manpage.file_locations():
            assert manpage.escape(default) in text and manpage.escape(relocated) in text


def test_every_option_and_argument_is_on_its_page() -> None:
    root = tree.build()
    for command in root.walk():
        if command.hidden:
            continue
        page = "lms.1" if len(command.path) < 2 else f"lms-{command.path[0]}.1"
        text = (ROOT / "man" / page).read_text()
        for option in command.options:
            for name in option.all_names:
                assert f"\\fB{manpage.escape(name)}\\fR" in text, f"{command.name} {name}"
        for argument in command.arguments:
            assert f"\\fI{manpage.escape(argument.metavar)}\\fR" in text


# --- every `lms ...` shown in the man pages and the README parses ---------------------------------


def _invocations(shell: str) -> list[list[str]]:
    """The argv of each `lms ...` command in a shell snippet (after $( , | ; && or a newline)."""
    found = []
    for line in shell.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0]
        for match in re.finditer(r"(?:^|\$\(|[|;&]\s*)\s*(lms(?:\s[^|;&)]*)?)", line.strip()):
            found.append(shlex.split(match.group(1)))
    return found


def _parse(argv: list[str]) -> None:
    """Parse argv with the app's own parser (options, argument counts and values)."""
    command: typer.core.TyperGroup | typer.core.TyperCommand = typer.main.get_command(app)
    args = argv[1:]
    while isinstance(command, typer.core.TyperGroup) and args and args[0] in command.commands:
        command, args = command.commands[args[0]], args[1:]
    command.make_context(" ".join(argv), list(args), resilient_parsing=False)


def test_every_man_page_example_parses() -> None:
    count = 0
    for entries in examples.EXAMPLES.values():
        for _, shell in entries:
            for argv in _invocations(shell):
                _parse(argv)
                count += 1
    assert count >= 25


def test_every_lms_command_in_the_readme_parses() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.DOTALL)
    argvs = [argv for block in blocks for argv in _invocations(block)]
    assert any(argv[:3] == ["lms", "token", "create"] for argv in argvs)
    for argv in argvs:
        _parse(argv)


def test_the_completion_scripts_are_valid_shell() -> None:
    checks = {"bash": "lms.bash", "zsh": "_lms", "fish": "lms.fish"}
    for shell, name in checks.items():
        if shutil.which(shell) is None:
            continue  # the completion tests skip, saying why
        done = subprocess.run(
            [shell, "-n", str(ROOT / "completions" / name)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{name}: {done.stderr}"
