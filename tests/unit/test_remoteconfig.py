"""lms.remoteconfig: ``[remotes.NAME]`` tables validated field by field, base URLs normalised, key
files read only when their owner alone may read them; a broken table breaks config.toml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from lms import config, remoteconfig
from lms.errors import ConfigBrokenError
from lms.remoteconfig import KeyFileError, RemoteSpec, parse_remote, read_key

KEY = "sk-upstream-0123456789abcdef"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LMS_HOME", str(tmp_path / "home"))
    return tmp_path


# --- names and URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "gpu", "gpu-1", "v.llm_2", "0", "a" * 48])
def test_valid_names(name: str) -> None:
    assert remoteconfig.check_name(name) == name


@pytest.mark.parametrize("name", ["", "GPU", "-a", ".a", "_a", "a/b", "a b", "a" * 49, "é"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ValueError, match="is not a remote name"):
        remoteconfig.check_name(name)


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("http://h", "http://h"),
        ("http://h/", "http://h"),
        ("http://h/v1", "http://h"),
        ("http://h/v1/", "http://h"),
        ("https://H.Example:8443/v1", "https://h.example:8443"),
        ("http://10.0.0.5:8080/prefix/v1/", "http://10.0.0.5:8080/prefix"),
        ("http://h/prefix/", "http://h/prefix"),
        ("http://[::1]:8080/v1", "http://[::1]:8080"),
        ("http://h/v1x", "http://h/v1x"),
    ],
)
def test_check_url_normalises(given: str, normalised: str) -> None:
    assert remoteconfig.check_url(given) == normalised


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "non-empty"),
        ("http://" + "h" * 2050, "at most 2048"),
        ("http://h/a b", "spaces or control"),
        ("http://h/\x7f", "spaces or control"),
        ("ftp://h", "only http:// and https://"),
        ("h:8080", "only http:// and https://"),
        ("http:///v1", "has no host"),
        ("http://user:pw@h", "must not hold credentials"),
        ("http://user@h", "must not hold credentials"),
        ("http://h/?a=1", "no query or fragment"),
        ("http://h/#x", "no query or fragment"),
        ("http://h:99999", "invalid port"),
        ("http://h:0", "invalid port"),
    ],
)
def test_check_url_refuses(given: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        remoteconfig.check_url(given)


def test_credentials_never_reach_the_message() -> None:
    with pytest.raises(ValueError) as raised:
        remoteconfig.check_url("https://me:hunter2@h.example/v1")
    assert "hunter2" not in str(raised.value)
    assert "https://h.example" in str(raised.value)


# --- parse_remote, field by field ---------------------------------------------------------------


def test_a_minimal_table_takes_every_default() -> None:
    spec = parse_remote("gpu", {"urls": ["http://h/v1"]})
    assert spec == RemoteSpec(name="gpu", urls=("http://h",))
    assert spec.table() == {"urls": ["http://h"]}
    assert (spec.timeout, spec.connect_timeout, spec.idle_timeout) == (600, 10, 300)
    assert (spec.max_concurrent, spec.health_path, spec.health_interval) == (64, "/v1/models", 5)


def test_a_full_table_round_trips() -> None:
    table: dict[str, Any] = {
        "urls": ["https://a.example", "https://b.example"],
        "key_file": "/etc/lms/upstream.key",
        "models": ["llama-*", "Qwen*"],
        "ca_file": "~/ca.pem",
        "timeout": 86_400,
        "connect_timeout": 1,
        "idle_timeout": 3600,
        "max_concurrent": 4096,
        "health_path": "/health",
        "health_interval": 60,
    }
    spec = parse_remote("gpu", table)
    assert spec.table() == table
    assert parse_remote("gpu", spec.table()) == spec
    assert spec.public_dict()["urls"] == table["urls"]
    assert "KEY" not in str(spec.public_dict())


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ([], "must be a table"),
        ({}, "urls: must be a list"),
        ({"urls": "http://h"}, "urls: must be a list"),
        ({"urls": []}, "urls: must be a list of one or more"),
        ({"urls": [f"http://h{i}" for i in range(17)]}, "urls: at most 16"),
        ({"urls": ["http://h", "http://h/v1/"]}, "urls: a replica is listed twice"),
        ({"urls": [1]}, "urls: a URL must be"),
        ({"urls": ["http://h"], "colour": "red"}, "unknown field 'colour'"),
        ({"urls": ["http://h"], "name": "x"}, "unknown field 'name'"),
        ({"urls": ["http://h"], "key_file": 3}, "key_file must be a string"),
        ({"urls": ["http://h"], "key_file": "relative.key"}, "key_file must be an absolute"),
        ({"urls": ["http://h"], "key_file": "/a\0b"}, "key_file must be an absolute"),
        ({"urls": ["https://h"], "ca_file": "ca.pem"}, "ca_file must be an absolute"),
        ({"urls": ["http://h"], "ca_file": "/ca.pem"}, "ca_file: only for https://"),
        ({"urls": ["https://h", "http://i"], "ca_file": "/ca.pem"}, "ca_file: only for https"),
        ({"urls": ["http://h"], "models": "llama"}, "models: must be a list"),
        ({"urls": ["http://h"], "models": [""]}, "models: must be a list of non-empty"),
        ({"urls": ["http://h"], "models": [3]}, "models: must be a list of non-empty"),
        ({"urls": ["http://h"], "models": ["m"] * 65}, "models: at most 64"),
        ({"urls": ["http://h"], "models": ["m" * 257]}, "models: at most 64 globs of at most"),
        ({"urls": ["http://h"], "timeout": 0}, "timeout: must be a whole number between 1"),
        ({"urls": ["http://h"], "timeout": 86_401}, "timeout: must be"),
        ({"urls": ["http://h"], "timeout": 1.5}, "timeout: must be"),
        ({"urls": ["http://h"], "timeout": True}, "timeout: must be"),
        ({"urls": ["http://h"], "timeout": "60"}, "timeout: must be"),
        ({"urls": ["http://h"], "connect_timeout": 301}, "connect_timeout: must be"),
        ({"urls": ["http://h"], "idle_timeout": 3601}, "idle_timeout: must be"),
        ({"urls": ["http://h"], "max_concurrent": 0}, "max_concurrent: must be"),
        ({"urls": ["http://h"], "health_interval": 0}, "health_interval: must be"),
        ({"urls": ["http://h"], "health_path": "health"}, "health_path: must be a path"),
        ({"urls": ["http://h"], "health_path": "/a/../b"}, "health_path: must be a path"),
        ({"urls": ["http://h"], "health_path": "/a?b"}, "health_path: must be a path"),
        ({"urls": ["http://h"], "health_path": 5}, "health_path: must be a path"),
    ],
)
def test_parse_remote_names_the_wrong_field(table: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        parse_remote("gpu", table)


def test_model_globs_are_case_insensitive() -> None:
    spec = parse_remote("gpu", {"urls": ["http://h"], "models": ["Llama-*"]})
    assert spec.serves("llama-3-8b") and spec.serves("LLAMA-3")
    assert not spec.serves("qwen")
    assert parse_remote("gpu", {"urls": ["http://h"]}).serves("anything")


def test_parse_remotes_bounds_and_sorts() -> None:
    doc = {f"r{i:02}": {"urls": [f"http://h{i}"]} for i in range(remoteconfig.MAX_REMOTES)}
    specs = remoteconfig.parse_remotes(dict(reversed(list(doc.items()))))
    assert [s.name for s in specs] == sorted(doc)
    with pytest.raises(ValueError, match="at most 32 remotes"):
        remoteconfig.parse_remotes({**doc, "one-more": {"urls": ["http://x"]}})
    with pytest.raises(ValueError, match=r"remotes\.Bad: "):
        remoteconfig.parse_remotes({"Bad": {"urls": ["http://h"]}})
    with pytest.raises(ValueError, match="must hold"):
        remoteconfig.parse_remotes(["http://h"])


# --- config.toml --------------------------------------------------------------------------------


def write_config(home: Path, text: str) -> Path:
    path = home / "home" / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[remotes.gpu]\nurls = ["ftp://h"]\n', "remotes.gpu: urls: 'ftp://h'"),
        ("[remotes.gpu]\ntimeout = 5\n", "remotes.gpu: urls: must be a list"),
        ('[remotes.GPU]\nurls = ["http://h"]\n', "remotes.GPU: 'GPU' is not a remote name"),
        ('[remotes]\ngpu = "http://h"\n', "remotes.gpu: must be a table"),
        ('remotes = ["http://h"]\n', "remotes: must hold"),
        ('[remotes.gpu]\nurls = ["http://h"]\nkey = "sk-x"\n', "unknown field 'key'"),
    ],
)
def test_a_broken_remotes_table_breaks_the_file(home: Path, text: str, message: str) -> None:
    path = write_config(home, text + "\n[server]\nport = 5678\n")
    with pytest.raises(ConfigBrokenError, match=message) as raised:
        config.read_file()
    assert str(path) in str(raised.value)
    with pytest.raises(ConfigBrokenError):
        config.load()


def test_remotes_come_from_the_file_only(home: Path) -> None:
    write_config(home, '[remotes.gpu]\nurls = ["http://h/v1"]\n')
    settings = config.load(environ={"LMS_REMOTES": "evil"})
    assert settings.remotes == (RemoteSpec(name="gpu", urls=("http://h",)),)
    assert "remotes" not in config.SETTINGS


def test_write_remotes_keeps_the_other_settings(home: Path) -> None:
    write_config(home, "[server]\nport = 5678\n")
    spec = parse_remote("gpu", {"urls": ["http://h"]})
    assert config.write_remotes(lambda current: (*current, spec)) == (spec,)
    assert config.read_file() == {"server.port": 5678, "remotes": (spec,)}
    assert config.write_remotes(lambda current: ()) == ()
    assert config.read_file() == {"server.port": 5678}


def test_write_remotes_writes_nothing_when_change_raises(home: Path) -> None:
    path = write_config(home, '[remotes.gpu]\nurls = ["http://h"]\n')
    before = path.read_bytes()

    def refuse(current: tuple[RemoteSpec, ...]) -> tuple[RemoteSpec, ...]:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        config.write_remotes(refuse)
    assert path.read_bytes() == before


# --- key files ----------------------------------------------------------------------------------


def key_file(tmp_path: Path, data: bytes = KEY.encode() + b"\n", mode: int = 0o600) -> Path:
    path = tmp_path / "upstream.key"
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_read_key_of_an_owner_only_file(tmp_path: Path) -> None:
    assert read_key(str(key_file(tmp_path))) == KEY
    assert read_key(str(key_file(tmp_path, mode=0o400))) == KEY
    assert read_key(str(key_file(tmp_path, b"  " + KEY.encode() + b"\r\n\n"))) == KEY


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o660, 0o644, 0o666, 0o610])
def test_read_key_refuses_a_file_others_may_touch(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path, mode=mode)
    with pytest.raises(KeyFileError, match=f"mode {mode:04o}.*chmod 600") as raised:
        read_key(str(path))
    assert KEY not in str(raised.value)


def test_read_key_refuses_a_symlink_even_to_a_good_file(tmp_path: Path) -> None:
    link = tmp_path / "link.key"
    link.symlink_to(key_file(tmp_path))
    with pytest.raises(KeyFileError, match="cannot open the key file"):
        read_key(str(link))


def test_read_key_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        read_key(str(folder))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        read_key(str(fifo))  # refused at once: no writer is waited for


def test_read_key_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot open the key file"):
        read_key(str(tmp_path / "missing.key"))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\n",
        b"x" * (remoteconfig.MAX_KEY_BYTES + 1),
        b"x" * (remoteconfig.MAX_KEY_BYTES + 10) + b"\n",
        b"two words\n",
        b"tab\there\n",
        b"one\ntwo\n",
        b"nul\x00byte",
        b"esc\x1b[31m",
        "caf\u00e9".encode(),
        b"\xff\xfe",
    ],
)
def test_read_key_refuses_a_malformed_key(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(KeyFileError, match="must hold one key") as raised:
        read_key(str(key_file(tmp_path, data)))
    assert data.decode("ascii", "replace").strip()[:8] not in str(raised.value) or not data.strip()


def test_read_key_accepts_the_longest_key(tmp_path: Path) -> None:
    key = "k" * remoteconfig.MAX_KEY_BYTES
    assert read_key(str(key_file(tmp_path, key.encode() + b"\n"))) == key
    assert read_key(str(key_file(tmp_path, key.encode()))) == key


def test_key_signature_changes_with_the_file(tmp_path: Path) -> None:
    path = key_file(tmp_path)
    first = remoteconfig.key_signature(str(path))
    assert first is not None
    path.write_bytes(b"another-key-of-another-length\n")
    assert remoteconfig.key_signature(str(path)) != first
    assert remoteconfig.key_signature(str(tmp_path / "missing")) is None
