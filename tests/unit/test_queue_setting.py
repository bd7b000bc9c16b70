"""The models.queue_length setting: its bounds, and the default a load gets without it."""

from __future__ import annotations

import pytest

from lms import config
from lms.errors import SettingError
from lms.inference.generation import LoadOptions


def test_bounds() -> None:
    assert config.parse_text("models.queue_length", "0") == 0
    assert config.parse_text("models.queue_length", "1024") == 1024
    for bad in ("-1", "1025", "many"):
        with pytest.raises(SettingError, match=r"models\.queue_length"):
            config.parse_text("models.queue_length", bad)


def test_default_matches_a_load_without_the_setting() -> None:
    assert config.setting("models.queue_length").default == LoadOptions().queue_length == 64
    assert config.setting("models.queue_length").env_var == "LMS_MODELS_QUEUE_LENGTH"
