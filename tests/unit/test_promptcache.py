"""Which slot a request takes, and how much of its prompt the slot's cells already hold."""

from __future__ import annotations

import pytest

from lms.inference.promptcache import PromptCache, common_prefix


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [1]) == 0


def test_empty_cache_takes_a_free_slot_and_reuses_nothing() -> None:
    cache = PromptCache(4)
    assert cache.choose([2, 3], [1, 2, 3], None) == (2, 0)


def test_longest_shared_prefix_wins() -> None:
    cache = PromptCache(3)
    cache.keep(0, [1, 2, 9, 9], None)
    cache.keep(1, [1, 2, 3, 4, 5], None)
    cache.keep(2, [1], None)
    assert cache.choose([0, 1, 2], [1, 2, 3, 4, 7], None) == (1, 4)


def test_the_last_prompt_token_is_always_decoded_again() -> None:
    cache = PromptCache(1)
    cache.keep(0, [1, 2, 3, 4, 5, 6], None)
    assert cache.choose([0], [1, 2, 3], None) == (0, 2)  # its logits give the first token
    cache.keep(0, [1, 2, 3], None)
    assert cache.choose([0], [1], None) == (0, 0)


def test_other_scopes_never_share() -> None:
    cache = PromptCache(2)
    cache.keep(0, [1, 2, 3, 4], "tokenA")
    slot, reuse = cache.choose([0, 1], [1, 2, 3, 4, 5], "tokenB")
    assert reuse == 0 and slot == 1  # the empty slot, keeping A's cache alive
    assert cache.choose([0], [1, 2, 3, 4, 5], None) == (0, 0)  # nor do scoped and unscoped


def test_without_a_match_the_least_recently_used_slot_goes() -> None:
    cache = PromptCache(3)
    cache.keep(0, [10, 11], None)
    cache.keep(1, [20, 21], None)
    cache.keep(2, [30, 31], None)
    cache.keep(0, [12, 13], None)  # slot 0 is now the most recent
    assert cache.choose([0, 1, 2], [99, 98], None) == (1, 0)


def test_a_short_shared_prefix_does_not_evict_a_long_cache() -> None:
    # Two prompts sharing only a chat template's first tokens: the second takes the empty slot,
    # and both stay cached.
    cache = PromptCache(2)
    first = [1, 2, *range(100, 150)]
    cache.keep(0, first, None)
    assert cache.choose([0, 1], [1, 2, *range(200, 250)], None) == (1, 0)
    # With no other slot, the short prefix is still reused.
    assert cache.choose([0], [1, 2, *range(200, 250)], None) == (0, 2)


def test_a_taken_slot_is_no_longer_offered_until_kept_again() -> None:
    cache = PromptCache(1)
    cache.keep(0, [1, 2, 3], None)
    assert cache.choose([0], [1, 2, 3, 4], None) == (0, 3)
    assert cache.cached(0) == 0
    assert cache.choose([0], [1, 2, 3, 4], None) == (0, 0)
    cache.keep(0, [1, 2, 3, 4, 5], None)
    assert cache.cached(0) == 5
    cache.forget(0)
    assert cache.cached(0) == 0


def test_no_free_slot_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        PromptCache(1).choose([], [1], None)


def test_common_prefix_finds_every_first_difference() -> None:
    base = list(range(100))
    for at in range(100):
        other = base.copy()
        other[at] = -1
        assert common_prefix(base, other) == at
    assert common_prefix(base, base[:37]) == 37


def test_an_empty_prompt_wants_no_prefix_and_spares_the_cached_slots() -> None:
    cache = PromptCache(2)
    cache.keep(0, [1, 2, 3], None)
    assert cache.choose([0, 1], [], None) == (1, 0)  # cache_prompt off: the empty slot
    assert cache.cached(0) == 3
