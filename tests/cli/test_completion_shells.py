"""The committed completion scripts, in real shells, with the real ``lms`` command on PATH.

- bash: the script is sourced and ``_lms`` is called with COMP_WORDS / COMP_CWORD / COMP_LINE
  set as bash sets them (words split at whitespace and at ':' and '=', COMP_WORDBREAKS).
- zsh: an interactive ``zsh -f -i`` on a pseudo-terminal (compinit, the completions folder on
  $fpath) gets the line and a real TAB; a wrapper around the ``compadd`` builtin records what
  the completion system offers for the word under the cursor, then the line is cleared.
- fish: ``complete -C 'LINE'`` after sourcing the script.

zsh and fish are skipped, saying why, when they are not installed (.ci/run installs them).
Token names come from a temporary LMS_HOME with two tokens; instances from a fake daemon.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_control import FakeControlServer, instance_doc

from lms import modelkeys, paths
from lms.auth.permissions import valid_names
from lms.auth.record import TokenRecord
from lms.auth.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
COMPLETIONS = ROOT / "completions"
BIN = Path(sys.executable).parent
WORDBREAKS = " \t\n\"'><=;|&(:"


@pytest.fixture
def two_tokens(lms_home: Path) -> list[TokenRecord]:
    return [Registry().create(name, None)[0] for name in ("alpha-ci", "beta-editor")]


@pytest.fixture
def shell_env(lms_home: Path, tmp_path: Path) -> dict[str, str]:
    """The environment of the shells: the venv's lms first on PATH, our LMS_HOME."""
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        LMS_HOME=str(lms_home),
        HOME=str(tmp_path),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_DATA_HOME=str(tmp_path / "data"),
        TERM="xterm",
    )
    return env


def _need(shell: str) -> str:
    path = shutil.which(shell)
    if path is None:
        pytest.skip(f"{shell} is not installed (.ci/run installs it with apt-get)")
    return path


# --- bash ---------------------------------------------------------------------------------------


def _bash_words(line: str) -> list[str]:
    """COMP_WORDS as bash builds them: whitespace separates, ':' and '=' are words of their own."""
    words = re.findall(r"[:=]|[^\s:=]+", line)
    if not line or line[-1] in " \t":
        words.append("")
    elif line[-1] in ":=":
        pass  # the cursor is right after a break character: its word is that character
    return words


def bash_complete(line: str, env: dict[str, str], cwd: Path | None = None) -> list[str]:
    words = _bash_words(line)
    script = "\n".join(
        [
            f"COMP_WORDBREAKS={shlex.quote(WORDBREAKS)}",
            f"source {shlex.quote(str(COMPLETIONS / 'lms.bash'))}",
            f"COMP_LINE={shlex.quote(line)}",
            "COMP_POINT=${#COMP_LINE}",
            f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})",
            f"COMP_CWORD={len(words) - 1}",
            "_lms",
            'printf "%s\\n" "${COMPREPLY[@]}"',
        ]
    )
    done = subprocess.run(
        [_need("bash"), "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [w for w in done.stdout.split("\n") if w]


def test_bash_commands(shell_env: dict[str, str]) -> None:
    assert bash_complete("lms to", shell_env) == ["token"]
    assert bash_complete("lms token r", shell_env) == ["rotate", "rm"]
    assert "--json" in bash_complete("lms token list --", shell_env)


def test_bash_token_names_and_ids(shell_env: dict[str, str], two_tokens: list[TokenRecord]) -> None:
    names = ["alpha-ci", "beta-editor"]
    ids = [t.id for t in two_tokens]
    assert bash_complete("lms token rm ", shell_env) == names + ids
    # Ids are random: one may begin like a name, and is then offered too.
    expected_a = ["alpha-ci", *(i for i in ids if i.startswith("al"))]
    expected_b = ["beta-editor", *(i for i in ids if i.startswith("b"))]
    assert bash_complete("lms token rm al", shell_env) == expected_a
    assert bash_complete("lms token rotate --grace 1h b", shell_env) == expected_b
    assert bash_complete(f"lms token edit {ids[0][:4]}", shell_env) == [
        i for i in ids if i.startswith(ids[0][:4])
    ]
    # One argument only: nothing more after it but the options.
    assert "--yes" in bash_complete("lms token rm alpha-ci ", shell_env)


def test_bash_fixed_values(shell_env: dict[str, str]) -> None:
    assert bash_complete("lms token create x --perm ", shell_env) == valid_names()
    assert bash_complete("lms token create x -p re", shell_env) == ["remote-mcp"]
    assert bash_complete("lms token create x --perm=mo", shell_env) == ["models"]
    assert bash_complete("lms auth require ", shell_env) == ["on", "off"]
    assert bash_complete("lms log stream --source ", shell_env) == ["server", "model"]
    assert bash_complete("lms config get server.p", shell_env) == ["server.port"]


def test_bash_files_and_models(shell_env: dict[str, str], lms_home: Path) -> None:
    model = paths.models_dir() / "google" / "gemma-3-270m" / "gemma-3-270m-q4_k_m.gguf"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"GGUF")
    modelkeys.write_manifest(model.parent, "google/gemma-3-270m")  # as the assembly writes it
    assert bash_complete("lms load ", shell_env) == ["google/gemma-3-270m"]
    assert bash_complete("lms chat goo", shell_env) == ["google/gemma-3-270m"]
    assert bash_complete(f"lms import {lms_home}/da", shell_env) == [f"{lms_home}/data"]


def test_bash_instances_with_colons_from_a_running_daemon(
    shell_env: dict[str, str], fake_daemon: FakeControlServer
) -> None:
    loaded = ["google/gemma-3-270m", "google/gemma-3-270m:embedding"]
    fake_daemon.route("GET", "/instances", (200, {"instances": [instance_doc(i) for i in loaded]}))
    assert bash_complete("lms unload ", shell_env) == loaded
    # Bash replaces only what follows the ':' it split the word at.
    assert bash_complete("lms unload google/gemma-3-270m:e", shell_env) == ["embedding"]
    assert bash_complete("lms unload google/gemma-3-270m:", shell_env) == ["embedding"]


def test_bash_never_expands_values(shell_env: dict[str, str], tmp_path: Path) -> None:
    # A folder name is data: compgen -W would run the $(...) in it.
    model = paths.models_dir() / "x" / "$(touch pwned)" / "m.gguf"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"GGUF")
    assert bash_complete("lms load ", shell_env, cwd=tmp_path) == ["$(touch pwned)"]
    assert not (tmp_path / "pwned").exists()


# --- zsh ----------------------------------------------------------------------------------------

_ZSH_SETUP = r"""
fpath=({completions} $fpath)
autoload -Uz compinit && compinit -u -D
unsetopt auto_list auto_menu list_beep beep
PROMPT='%% '
compadd() {{
  local arg
  for arg in "$@"; do
    [[ $arg == (-|--) ]] && break
    # -O/-A/-D only filter into an array: nothing is offered, nothing to record.
    [[ $arg == -[OAD]* ]] && {{ builtin compadd "$@"; return }}
  done
  local -a hits
  builtin compadd -A hits "$@"
  (( $#hits )) && print -rl -- $hits >> {matches}
  builtin compadd "$@"
}}
# TAB completes, then marks the end of the completion in the file: the test waits for the mark
# instead of typing ahead (zle would read typed-ahead keys while the completion runs).
integer _lms_tabs=0
_lms_test_tab() {{
  zle complete-word
  (( ++_lms_tabs ))
  print -r -- __tab_${{_lms_tabs}}__ >> {matches}
}}
zle -N _lms_test_tab
bindkey '^I' _lms_test_tab
print -r -- __ready__ >> {matches}
"""


class ZshSession:
    """An interactive zsh on a pseudo-terminal, driven like a user at a keyboard."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        import pty

        self.matches = tmp / "zsh-matches"
        setup = tmp / "setup.zsh"
        setup.write_text(
            _ZSH_SETUP.format(
                completions=shlex.quote(str(COMPLETIONS)), matches=shlex.quote(str(self.matches))
            )
        )
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [_need("zsh"), "-f", "-i"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.tabs = 0
        self.output = b""
        self._type(f"source {shlex.quote(str(setup))}\n")
        self._wait_for("__ready__")

    def _type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def _drain(self, timeout: float) -> None:
        if select.select([self.master], [], [], timeout)[0]:
            with contextlib.suppress(OSError):  # the shell has exited
                self.output += os.read(self.master, 65536)

    def _wait_for(self, marker: str) -> list[str]:
        """The lines recorded before ``marker`` (which ends them), once it is in the file."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._drain(0.05)
            lines = self.matches.read_text().split("\n") if self.matches.exists() else []
            if marker in lines:
                self.matches.write_text("")
                return [line for line in lines[: lines.index(marker)] if line]
        raise AssertionError(f"zsh did not finish; its screen: {self.output[-2000:]!r}")

    def complete(self, line: str) -> list[str]:
        """What zsh offers for the last word of ``line`` at a TAB (in the order offered)."""
        self.tabs += 1
        self._type("\x15" + line + "\t")  # Ctrl-U first: clear what the last TAB inserted
        return self._wait_for(f"__tab_{self.tabs}__")

    def close(self) -> None:
        self._type("\x15exit\n")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def zsh(shell_env: dict[str, str], tmp_path: Path) -> Iterator[ZshSession]:
    session = ZshSession(shell_env, tmp_path)
    try:
        yield session
    finally:
        session.close()


def test_zsh(zsh: ZshSession, two_tokens: list[TokenRecord]) -> None:
    assert zsh.complete("lms to") == ["token"]
    assert set(zsh.complete("lms token rm ")) == {"alpha-ci", "beta-editor"} | {
        t.id for t in two_tokens
    }
    assert zsh.complete("lms token rm be") == ["beta-editor"]
    assert set(zsh.complete("lms token create x --perm ")) == set(valid_names())
    assert zsh.complete("lms token create x --perm=rem") == ["remote-mcp"]
    assert set(zsh.complete("lms auth require ")) == {"on", "off"}
    assert set(zsh.complete("lms log stream --source ")) == {"server", "model"}
    assert "--json" in zsh.complete("lms token list --")


# --- fish ---------------------------------------------------------------------------------------


def fish_complete(line: str, env: dict[str, str]) -> list[str]:
    script = f"source {shlex.quote(str(COMPLETIONS / 'lms.fish'))}; complete -C {shlex.quote(line)}"
    done = subprocess.run(
        [_need("fish"), "--no-config", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [entry.split("\t")[0] for entry in done.stdout.split("\n") if entry]


def test_fish(shell_env: dict[str, str], two_tokens: list[TokenRecord]) -> None:
    assert fish_complete("lms to", shell_env) == ["token"]
    offered = set(fish_complete("lms token rm ", shell_env))
    assert offered == {"alpha-ci", "beta-editor"} | {t.id for t in two_tokens}
    ids = [t.id for t in two_tokens]
    assert fish_complete("lms token rm al", shell_env) == [
        "alpha-ci",
        *(i for i in ids if i.startswith("al")),
    ]
    assert set(fish_complete("lms token create x --perm ", shell_env)) == set(valid_names())
    assert set(fish_complete("lms auth require ", shell_env)) == {"on", "off"}
    assert set(fish_complete("lms log stream -s ", shell_env)) == {"server", "model"}
    assert "--json" in fish_complete("lms token list --", shell_env)


def test_zsh_instances_with_colons(zsh: ZshSession, fake_daemon: FakeControlServer) -> None:
    loaded = ["google/gemma-3-270m", "google/gemma-3-270m:embedding"]
    fake_daemon.route("GET", "/instances", (200, {"instances": [instance_doc(i) for i in loaded]}))
    assert zsh.complete("lms unload ") == loaded
    assert zsh.complete("lms unload google/gemma-3-270m:") == ["google/gemma-3-270m:embedding"]


def test_typers_own_bash_completion_still_works(
    shell_env: dict[str, str], two_tokens: list[TokenRecord]
) -> None:
    # `lms --install-completion` installs what `--show-completion` prints: Typer's dynamic
    # script, which runs the whole CLI (through lms.launcher) at each TAB.
    env = dict(shell_env, SHELL="/bin/bash")
    # Typer finds the shell by walking up the process tree (shellingham), not from an argument:
    # run it as a child of bash (a second command keeps bash from exec-ing it), or a run under
    # `make` (sh) gets "Shell sh not supported".
    command = f"{BIN / 'lms'} --show-completion; exit $?"
    shown = subprocess.run(
        [_need("bash"), "--norc", "--noprofile", "-c", command],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    script = shown.stdout
    assert "complete" in script and "_LMS_COMPLETE" in script
    run = script + "\nCOMP_WORDS=(lms token rm al); COMP_CWORD=3; _lms_completion lms\n"
    run += 'printf "%s\\n" "${COMPREPLY[@]}"\n'
    done = subprocess.run(
        [_need("bash"), "--norc", "--noprofile", "-c", run],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.stdout.split() == ["alpha-ci"], done.stderr
