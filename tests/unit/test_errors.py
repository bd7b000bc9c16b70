"""The one error table."""

from __future__ import annotations

from lms import errors, protocol


def test_codes_are_unique_and_round_trip() -> None:
    classes = errors.error_classes()
    assert len({c.code for c in classes}) == len(classes)
    for cls in classes:
        rebuilt = errors.from_code(cls.code, "msg", hint="h")
        assert type(rebuilt) is cls
        assert rebuilt.hint == "h"


def test_unknown_code_becomes_base_error() -> None:
    err = errors.from_code("from_the_future", "something")
    assert type(err) is errors.LmsError
    assert err.exit_code == errors.ExitCode.FAILED


def test_statuses_and_exit_codes() -> None:
    assert errors.MissingApiKeyError("x").status == 401
    assert errors.PermissionDeniedError("x").status == 403
    assert errors.RateLimitedError("x").status == 429
    assert errors.ModelNotFoundError("x").exit_code == errors.ExitCode.NOT_FOUND
    assert errors.PortInUseError("x").exit_code == errors.ExitCode.CONFLICT
    assert errors.DaemonNotRunningError("x").exit_code == errors.ExitCode.NOT_RUNNING
    assert errors.SettingError("x").exit_code == errors.ExitCode.USAGE
    assert set(errors.EXIT_CODE_MEANINGS) == set(errors.ExitCode)


def test_envelopes() -> None:
    err = errors.InvalidParameterError("bad", param="temperature")
    assert protocol.api_error_body(err) == {
        "error": {
            "type": "invalid_request",
            "code": "invalid_parameter",
            "message": "bad",
            "param": "temperature",
        }
    }
    assert protocol.anthropic_error_body(errors.InvalidApiKeyError("no")) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "no"},
    }
