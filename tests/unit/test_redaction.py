"""Redaction and one-line escaping of everything the daemon logs (lms/redaction.py), and the
formatter every daemon log handler uses (lms/daemon/logs.py)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from lms.auth import tokens
from lms.daemon import logs
from lms.redaction import escape_controls, loggable_path, redact, redact_value, scrub

TOKEN_ID, TOKEN = tokens.generate()
SECRET = TOKEN.split(":", 1)[1]


def _named(text: str) -> str:
    """``text`` with this run's random token written as placeholders."""
    for value, name in ((TOKEN, "<token>"), (SECRET, "<secret>"), (TOKEN_ID, "<id>")):
        for variant in (value, value.upper(), value.replace(":", "%3A"), value[:-3]):
            text = text.replace(variant, name)
    return text


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {TOKEN}",
        f"Authorization : Bearer {TOKEN}\r\n",
        f"authorization:bearer {SECRET}",
        f"GET /v1/models?api_key={TOKEN} HTTP/1.1",
        f"GET /v1/models?api_key={SECRET}&x=1 HTTP/1.1",
        f"x-api-key: {SECRET}",
        f'{{"clientIdentifier": "{TOKEN_ID}", "clientPasskey": "{SECRET}"}}',
        f"/v1/{TOKEN.replace(':', '%3A')}/models",
        f"/v1/{TOKEN.upper()}",
        repr(f"\x01{SECRET}".encode()),  # a repr glues the secret to an escape
        f"password={SECRET}",
        f"{TOKEN[:-3]}",  # truncated
        f"prefix{SECRET}suffix",
    ],
    ids=lambda text: repr(_named(text)),  # the same ids in every process (pytest-xdist)
)
def test_no_secret_survives(text: str) -> None:
    out = scrub(text)
    assert SECRET not in out and SECRET.upper() not in out and TOKEN not in out
    assert SECRET[:-3] not in out
    assert "\n" not in out and "\r" not in out


def test_token_keeps_its_public_id() -> None:
    assert redact(f"token {TOKEN} used") == f"token sk-lm-{TOKEN_ID}:*** used"


def test_ordinary_text_is_kept() -> None:
    for text in (
        "GET /v1/models 200",
        "the Authorization header must use the Bearer scheme",
        "a basic question about model google/gemma-3-270m",
        "sha256 " + "0123456789abcdef" * 4,  # a digest is not a secret
        '{"predictedTokensCount": 3, "word": "internationalization"}',  # nor are long words
        "refused POST /v1/chat/completions: invalid_api_key (token abcd1234)",
    ):
        assert redact(text) == text


def test_control_characters_escaped() -> None:
    assert escape_controls("a\nb\rc\td\x00e\x1bf\x7fg\x85h\u2028i") == (
        "a\\nb\\rc\\td\\x00e\\x1bf\\x7fg\\x85h\\u2028i"
    )
    assert "\n" not in scrub("x\n2026-01-01 WARNING lms.auth: FORGED")


def test_loggable_path() -> None:
    assert loggable_path("/v1/models?api_key=x") == "/v1/models"
    assert loggable_path("/a\nb") == "/a\\nb"
    long = loggable_path("/x" * 1000)
    assert len(long) <= 256 and long.endswith("…")


def test_redact_value_walks_json() -> None:
    value = {"a": [TOKEN, {"b": f"Bearer {TOKEN}"}], "n": 3, TOKEN: None}
    assert TOKEN not in repr(redact_value(value)) and SECRET not in repr(redact_value(value))
    assert redact_value(value)["n"] == 3


def _log_through_daemon_handlers(tmp_path: Path, emit: logging.Logger) -> str:
    path = tmp_path / "daemon.log"
    root = logging.getLogger()
    saved = root.handlers[:], root.level, threading.excepthook
    try:
        logs.setup(path, foreground=False)
        emit.warning("forged? %s", f"/x\n2026-01-01 00:00:00 WARNING lms.auth: FORGED {TOKEN}")
        try:
            raise ValueError(f"bad line b'Authorization : Bearer {TOKEN}'\nsecond line")
        except ValueError:
            emit.exception("Error handling request from %s", "127.0.0.1")
        for handler in root.handlers:
            handler.flush()
            handler.close()
    finally:
        root.handlers[:], level, threading.excepthook = saved
        root.setLevel(level)
        logging.captureWarnings(False)
    return path.read_text(encoding="utf-8")


def test_daemon_log_lines_are_redacted_and_one_per_record(tmp_path: Path) -> None:
    text = _log_through_daemon_handlers(tmp_path, logging.getLogger("aiohttp.server"))
    lines = text.splitlines()
    assert len(lines) == 2, lines
    assert all(" aiohttp.server: " in line for line in lines)
    assert "FORGED" in lines[0] and "\\n2026" in lines[0]
    assert "Traceback" in lines[1] and "ValueError" in lines[1]
    assert TOKEN not in text and SECRET not in text


def test_thread_deaths_are_logged_redacted(tmp_path: Path) -> None:
    path = tmp_path / "daemon.log"
    root = logging.getLogger()
    saved = root.handlers[:], root.level, threading.excepthook
    try:
        logs.setup(path, foreground=False)

        def die() -> None:
            raise RuntimeError(f"leaked {TOKEN}")

        thread = threading.Thread(target=die, name="doomed")
        thread.start()
        thread.join()
        for handler in root.handlers:
            handler.flush()
            handler.close()
    finally:
        root.handlers[:], level, threading.excepthook = saved
        root.setLevel(level)
        logging.captureWarnings(False)
    text = path.read_text(encoding="utf-8")
    assert "thread doomed died" in text and "RuntimeError" in text
    assert SECRET not in text and len(text.splitlines()) == 1
