"""Stop-string matching across streamed pieces."""

from __future__ import annotations

from lms.inference.sampling import SamplingParams, StopMatcher


def feed_all(matcher: StopMatcher, pieces: list[str]) -> str:
    return "".join(matcher.feed(p) for p in pieces) + matcher.flush()


def test_no_stops_passes_text_through() -> None:
    assert feed_all(StopMatcher(()), ["a", "b"]) == "ab"


def test_stop_split_across_pieces() -> None:
    matcher = StopMatcher(("<end>",))
    assert feed_all(matcher, ["hello <e", "n", "d> world"]) == "hello "
    assert matcher.stopped


def test_held_prefix_released_when_not_a_stop() -> None:
    matcher = StopMatcher(("<end>",))
    assert matcher.feed("a <e") == "a "
    assert matcher.feed("x") == "<ex"
    assert not matcher.stopped


def test_earliest_stop_wins() -> None:
    matcher = StopMatcher(("world", "lo"))
    assert feed_all(matcher, ["hello world"]) == "hel"


def test_flush_returns_held_tail() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("abcST") == "abc"
    assert matcher.flush() == "ST"


def test_nothing_after_stop() -> None:
    matcher = StopMatcher(("x",))
    matcher.feed("axb")
    assert matcher.feed("more") == ""
    assert matcher.flush() == ""


def test_greedy_needs_neutral_penalties() -> None:
    assert SamplingParams(temperature=0).is_greedy
    assert not SamplingParams(temperature=0, repeat_penalty=1.1).is_greedy
    assert not SamplingParams(temperature=0.5).is_greedy
