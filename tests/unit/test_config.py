"""Settings: validation, precedence, security keys from the file only, the daemon's watcher."""

from __future__ import annotations

from pathlib import Path

import pytest
from fulldisk import small_tmpfs

from lms import config
from lms.errors import ConfigBrokenError, ExitCode, SettingError, StorageFullError


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    for spec in config.SETTINGS.values():
        if spec.env_var:
            monkeypatch.delenv(spec.env_var, raising=False)
    return tmp_path


def test_defaults() -> None:
    settings = config.load()
    assert settings.server_port == 1234
    assert settings.server_bind == "127.0.0.1"
    assert settings.auth_required is False
    assert settings.models_context_length == 4096


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        ("server.port", "8080", 8080),
        ("auth.required", "on", True),
        ("auth.required", "OFF", False),
        ("server.cors_origins", "http://a:1, http://b", ("http://a:1", "http://b")),
        ("server.cors_origins", '["http://a"]', ("http://a",)),
        ("server.bind", "0.0.0.0", "0.0.0.0"),
        ("models.ttl", "0", 0),
        ("models.ttl", "2592000", 2592000),
        ("models.max_context_length", "65536", 65536),
    ],
)
def test_parse_text(key: str, text: str, value: object) -> None:
    assert config.parse_text(key, text) == value


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("server.port", "http"),
        ("server.port", "70000"),
        ("auth.required", "maybe"),
        ("server.bind", "my laptop"),
        ("server.cors_origins", "*"),
        ("server.cors_origins", "evil"),
        ("models.context_length", "8"),
        ("models.ttl", "2592001"),
        ("models.ttl", "9" * 401),
        ("models.max_context_length", "8"),
        ("models.max_context_length", "1048577"),
        ("no.such_key", "1"),
    ],
)
def test_bad_values_are_usage_errors(key: str, text: str) -> None:
    with pytest.raises(SettingError) as info:
        config.parse_text(key, text)
    assert info.value.exit_code == ExitCode.USAGE
    assert key in info.value.message or "unknown" in info.value.message


def test_set_writes_file_and_precedence(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config.set_value("server.port", "2000")
    assert (home / "config" / "config.toml").stat().st_mode & 0o777 == 0o600
    assert config.load().server_port == 2000
    monkeypatch.setenv("LMS_SERVER_PORT", "3000")
    assert config.load().server_port == 3000
    assert config.load({"server.port": 4000}).server_port == 4000


def test_security_settings_ignore_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMS_AUTH_REQUIRED", "off")
    config.set_value("auth.required", "on")
    assert config.load().auth_required is True
    assert config.SETTINGS["auth.required"].env_var is None
    with pytest.raises(SettingError):
        config.load({"auth.required": False})


def test_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMS_SERVER_PORT", "lots")
    with pytest.raises(SettingError, match="LMS_SERVER_PORT"):
        config.load()


@pytest.mark.parametrize(
    "text",
    ["[server\n", "[server]\nport = 'x'\n", "[server]\nnope = 1\n", "server = 1\n"],
)
def test_broken_file_is_reported(home: Path, text: str) -> None:
    path = home / "config" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(ConfigBrokenError, match=r"config\.toml"):
        config.read_file()


def test_watcher_rereads_and_fails_closed(home: Path) -> None:
    watcher = config.ConfigWatcher({"server.port": 9})
    assert watcher.current().auth_required is False
    config.set_value("auth.required", "on")
    assert watcher.current().auth_required is True
    assert watcher.current().server_port == 9  # overrides survive a re-read
    (home / "config" / "config.toml").write_text("garbage = [")
    with pytest.raises(ConfigBrokenError):
        watcher.current()
    (home / "config" / "config.toml").write_text("[auth]\nrequired = false\n")
    assert watcher.current().auth_required is False


def test_unset_returns_to_default() -> None:
    config.set_value("models.ttl", "60")
    config.unset_value("models.ttl")
    assert config.load().models_ttl == 3600


def test_max_context_length_is_file_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.setting("models.max_context_length").env_var is None
    monkeypatch.setenv("LMS_MODELS_MAX_CONTEXT_LENGTH", "1048576")
    assert config.load().models_max_context_length == 32768
    with pytest.raises(SettingError, match=r"only be set in config\.toml"):
        config.load({"models.max_context_length": 1048576})
    config.set_value("models.max_context_length", "2048")
    assert config.load().models_max_context_length == 2048


def test_a_full_disk_refuses_set_and_unset_and_keeps_config_toml(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with small_tmpfs() as disk:
        monkeypatch.setenv("LMS_HOME", str(disk.root))
        config.set_value("server.port", "2000")
        config.set_value("server.bind", "127.0.0.1")
        path = disk.root / "config" / "config.toml"
        before = path.read_bytes()
        disk.fill()
        for change in (
            lambda: config.set_value("server.port", "3000"),
            lambda: config.unset_value("server.port"),
        ):
            with pytest.raises(StorageFullError) as info:
                change()
            assert info.value.data == {"path": str(path)}
            assert path.read_bytes() == before
        assert config.load().server_port == 2000
        disk.free()
        config.set_value("server.port", "3000")
        assert config.load().server_port == 3000


def test_models_dir_defaults_to_the_data_folder_and_follows_the_setting(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert config.current_models_dir() == home / "data" / "models"
    lmstudio = home / "lmstudio" / "models"
    lmstudio.mkdir(parents=True)
    assert config.set_value("models.dir", str(lmstudio)) == str(lmstudio)
    assert config.current_models_dir() == lmstudio
    monkeypatch.setenv("HOME", str(home / "lmstudio"))
    config.set_value("models.dir", "~/models")  # kept as written, expanded where used
    assert config.read_file()["models.dir"] == "~/models"
    assert config.current_models_dir() == lmstudio
    watcher = config.ConfigWatcher({})
    assert config.models_dir_of(watcher.current()) == lmstudio
    config.unset_value("models.dir")
    assert config.models_dir_of(watcher.current()) == home / "data" / "models"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models", "must be an absolute path"),
        ("./models", "must be an absolute path"),
        ("/no/such/folder", "/no/such/folder is not a folder"),
    ],
)
def test_models_dir_is_validated(home: Path, text: str, message: str) -> None:
    with pytest.raises(SettingError, match=message) as caught:
        config.set_value("models.dir", text)
    assert "models.dir" in caught.value.message
    assert not config.paths.config_file().exists()


def test_models_dir_must_be_a_folder(home: Path) -> None:
    (home / "file").write_text("x")
    with pytest.raises(SettingError, match="is not a folder"):
        config.set_value("models.dir", str(home / "file"))
