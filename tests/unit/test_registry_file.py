"""``auth.registry_file``: its validation, the one function that decides the registry's path,
and the verifier following it (docs/GATES.md)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from lms import completion, config, paths
from lms.auth.registry import Registry
from lms.auth.verifier import TokenVerifier
from lms.errors import ConfigBrokenError, InvalidApiKeyError, SettingError

KEY = "auth.registry_file"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LMS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write_config(text: str) -> None:
    paths.ensure_dir(paths.config_dir())
    paths.config_file().write_text(text)


def point_at(path: Path) -> None:
    write_config(f'[auth]\nregistry_file = "{path}"\n')


# --- the setting ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "/srv/lms/tokens.toml", "~/shared/tokens.toml"])
def test_accepted_values(text: str) -> None:
    assert config.parse_text(KEY, text) == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tokens.toml", "absolute path"),
        ("shared/tokens.toml", "absolute path"),
        ("/srv/lms/", "not a folder"),
        ("/srv/\0/tokens.toml", "NUL"),
        ("~no-such-user-lms/tokens.toml", "cannot expand"),
    ],
)
def test_refused_values(text: str, problem: str) -> None:
    with pytest.raises(SettingError, match=problem):
        config.parse_text(KEY, text)


def test_a_relative_path_in_config_toml_is_a_broken_config() -> None:
    write_config('[auth]\nregistry_file = "tokens.toml"\n')
    problem = re.escape("auth.registry_file: must be an absolute path")
    with pytest.raises(ConfigBrokenError, match=problem):
        config.current_registry_file()


def test_it_is_a_security_setting_read_from_the_file_only(tmp_path: Path) -> None:
    spec = config.SETTINGS[KEY]
    assert spec.security and spec.env_var is None
    with pytest.raises(SettingError, match=re.escape("can only be set in config.toml")):
        config.build({}, {KEY: str(tmp_path / "x.toml")})
    # No LMS_* variable moves it: the environment of whoever starts a daemon cannot.
    assert config.env_values({"LMS_AUTH_REGISTRY_FILE": "/tmp/evil.toml"}) == {}


def test_unset_keeps_the_default_path() -> None:
    assert config.Settings().auth_registry_file == ""
    assert config.registry_file_of(config.Settings()) == paths.tokens_file()
    assert config.current_registry_file() == paths.tokens_file()  # no config.toml at all
    write_config("[auth]\nrequired = true\n")
    assert config.current_registry_file() == paths.tokens_file()


def test_the_configured_path_with_tilde_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    settings = config.Settings(auth_registry_file="~/shared/tokens.toml")
    assert config.registry_file_of(settings) == tmp_path / "user" / "shared" / "tokens.toml"
    point_at(tmp_path / "shared.toml")
    assert config.current_registry_file() == tmp_path / "shared.toml"


def test_a_tilde_without_a_home_directory_is_a_broken_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HOME", raising=False)
    settings = config.Settings(auth_registry_file="~no-such-user-lms/tokens.toml")
    with pytest.raises(ConfigBrokenError, match=re.escape("auth.registry_file")):
        config.registry_file_of(settings)


def test_set_value_needs_an_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="is not a folder") as caught:
        config.set_value(KEY, str(tmp_path / "missing" / "tokens.toml"))
    assert "mount" in (caught.value.hint or "")
    assert not paths.config_file().exists()
    assert config.set_value(KEY, str(tmp_path / "tokens.toml")) == str(tmp_path / "tokens.toml")
    assert config.current_registry_file() == tmp_path / "tokens.toml"
    assert config.unset_value(KEY) == ""
    assert config.current_registry_file() == paths.tokens_file()


# --- the registry and completion use it ------------------------------------------------------


def test_registry_operations_use_the_configured_file(tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "tokens.toml"
    shared.parent.mkdir()
    point_at(shared)
    record, _ = Registry().create("ci")
    assert Registry().find("ci") == record
    assert shared.exists() and (shared.parent / "tokens.toml.lock").exists()
    assert not paths.tokens_file().exists()
    assert completion.values("tokens") == ["ci", record.id]
    Registry().remove("ci")
    assert Registry().list() == []


def test_a_configured_registry_whose_folder_is_missing_is_broken_and_never_created(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "unmounted" / "tokens.toml"
    point_at(missing)
    with pytest.raises(ConfigBrokenError, match="does not exist") as caught:
        Registry().create("ci")
    assert str(missing) in caught.value.message
    with pytest.raises(ConfigBrokenError, match="does not exist"):
        Registry().list()
    assert not missing.parent.exists()
    assert completion.values("tokens") == []


def test_registry_refuses_to_guess_while_config_toml_is_broken() -> None:
    Registry().create("ci")  # in the default tokens.toml
    write_config("[auth\n")
    with pytest.raises(ConfigBrokenError, match=re.escape("config.toml")):
        Registry().list()
    with pytest.raises(ConfigBrokenError, match=re.escape("config.toml")):
        Registry().create("other")
    # A TAB reads config.toml only when it mentions the setting (lms.config is not imported
    # otherwise), and shows nothing while that config.toml is broken.
    assert completion.values("tokens")[0] == "ci"
    write_config("[auth]\nregistry_file = 7\n")
    assert completion.values("tokens") == []


# --- the verifier follows the setting --------------------------------------------------------


def test_the_verifier_follows_config_toml_on_its_next_check(tmp_path: Path) -> None:
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    _, token_first = Registry(first).create("a")
    _, token_second = Registry(second).create("b")
    verifier = TokenVerifier()  # the default: config.toml's registry, followed
    with pytest.raises(InvalidApiKeyError):  # nothing in the default tokens.toml
        verifier.authenticate(token_first)
    assert verifier.path == paths.tokens_file()

    point_at(first)
    assert verifier.authenticate(token_first).name == "a"
    with pytest.raises(InvalidApiKeyError):
        verifier.authenticate(token_second)
    point_at(second)
    assert verifier.authenticate(token_second).name == "b"
    with pytest.raises(InvalidApiKeyError):
        verifier.authenticate(token_first)
    assert verifier.path == second
    assert verifier.status()["path"] == str(second)


def test_the_daemons_verifier_reads_its_config_watcher(tmp_path: Path) -> None:
    shared = tmp_path / "shared.toml"
    _, token = Registry(shared).create("a")
    watcher = config.ConfigWatcher({})
    verifier = TokenVerifier(config.registry_locator(watcher))  # as the daemon builds it
    with pytest.raises(InvalidApiKeyError):
        verifier.authenticate(token)
    point_at(shared)
    assert verifier.authenticate(token).name == "a"


def test_the_verifier_fails_closed_while_config_toml_is_broken(tmp_path: Path) -> None:
    shared = tmp_path / "shared.toml"
    _, token = Registry(shared).create("a")
    point_at(shared)
    verifier = TokenVerifier()
    assert verifier.authenticate(token).name == "a"
    write_config("[auth]\nregistry_file = 7\n")
    with pytest.raises(ConfigBrokenError, match=re.escape("auth.registry_file")):
        verifier.authenticate(token)
    status = verifier.status()
    assert status["healthy"] is False and status["path"] is None and status["tokens"] == 0
    point_at(shared)
    assert verifier.authenticate(token).name == "a"


def test_the_verifier_fails_closed_while_the_folder_is_missing(tmp_path: Path) -> None:
    folder = tmp_path / "share"
    shared = folder / "tokens.toml"
    point_at(shared)
    verifier = TokenVerifier()
    with pytest.raises(ConfigBrokenError, match="does not exist"):
        verifier.authenticate("sk-lm-Ab3dE5fG:" + "x" * 20)
    folder.mkdir()  # the share is mounted again
    _, token = Registry().create("a")
    assert verifier.authenticate(token).name == "a"
    shutil.rmtree(folder)  # ... and gone again: refused, not an empty registry
    with pytest.raises(ConfigBrokenError, match="does not exist"):
        verifier.authenticate(token)
