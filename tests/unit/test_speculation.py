"""Speculative decoding's pure parts: prompt-lookup guesses, the cost model and the plan."""

from __future__ import annotations

import pytest

from lms.inference.speculation import (
    MAX_GUESSES,
    Candidate,
    Costs,
    Guessing,
    Lookup,
    expected_accepted,
    match_class,
    plan,
    prior,
)

# The cost of one decode by rows measured on a 2-core machine (docs/SPECULATIVE.md): two rows
# cost as much as two steps, four barely more, eight less than five.
MEASURED = {
    1: 11.3,
    2: 22.4,
    3: 26.3,
    4: 28.4,
    5: 44.2,
    6: 48.0,
    7: 51.6,
    8: 41.3,
    16: 53.0,
    32: 90.0,
}


def costs(table: dict[int, float] = MEASURED) -> Costs:
    model = Costs()
    for rows, ms in table.items():
        model.record(rows, ms)
    return model


def test_a_lookup_continues_where_the_suffix_occurred_before() -> None:
    lookup = Lookup([1, 2, 3, 4, 5, 6, 9, 9, 1, 2, 3])
    guess, matched = lookup.guess(3)
    assert guess == [4, 5, 6]
    assert matched == 3


def test_a_lookup_never_finds_the_suffix_itself() -> None:
    lookup = Lookup([7, 8, 9])
    assert lookup.guess(4) == ([], 0)
    lookup.extend([5, 7, 8])  # now "7 8" occurred before, followed by 9
    assert lookup.guess(1) == ([9], 2)


def test_the_longest_agreeing_occurrence_wins_over_the_latest() -> None:
    # "x 1 2" continues with 3 at the start; "y 1 2" later continues with 4. The text now ends
    # in "x 1 2": the earlier occurrence agrees one token further back.
    lookup = Lookup([50, 1, 2, 3, 60, 51, 1, 2, 4, 70, 50, 1, 2])
    guess, matched = lookup.guess(1)
    assert guess == [3]
    assert matched == 3


def test_a_guess_goes_round_a_loop() -> None:
    lookup = Lookup([5, 1, 2, 3, 1, 2, 3, 1, 2])
    guess, _ = lookup.guess(7)
    assert guess == [3, 1, 2, 3, 1, 2, 3]


def test_a_lookup_sees_only_the_tokens_it_was_given() -> None:
    lookup = Lookup([4, 5, 6])
    lookup.extend([4, 5])
    assert lookup.tokens == [4, 5, 6, 4, 5]
    assert lookup.guess(2)[0] == [6, 4]


def test_priors_grow_with_the_match() -> None:
    assert prior(0) == prior(1) == 0.0
    assert prior(2) < prior(4) < prior(16) < 1.0
    assert match_class(3) == 2 and match_class(40) == 32 and match_class(1) == 0


def test_a_record_moves_a_class_away_from_its_prior() -> None:
    guessing = Guessing()
    start = guessing.rate(4)
    guessing.current = match_class(4)
    for _ in range(20):
        guessing.verified(right=False)
    assert guessing.rate(4) < 0.2 < start
    # Other classes start from the sequence's record (all misses here), not their prior.
    assert guessing.rate(16) < 0.5 < prior(16)
    assert (guessing.accepted, guessing.rejected) == (0, 20)


def test_a_sequence_that_copies_guesses_again_at_once() -> None:
    guessing = Guessing()
    guessing.current = match_class(32)
    for _ in range(40):
        guessing.verified(right=True)
    assert guessing.rate(2) > 0.9 > prior(2)  # right after a miss, the match is short


def test_unverified_guesses_are_judged_without_counting_as_drafts() -> None:
    guessing = Guessing()
    guessing.current = match_class(2)
    for _ in range(10):
        guessing.verified(right=False)
    low = guessing.rate(2)
    for _ in range(30):  # the text turned into a copy: each step's unverified guess was right
        guessing.unverified = 7
        guessing.observed(7)
    assert guessing.rate(2) > 0.7 > low
    assert (guessing.total, guessing.accepted, guessing.rejected) == (0, 0, 10)  # reported
    guessing.observed(7)  # nothing pending: nothing booked
    assert guessing.judged == 40


def test_expected_accepted_is_a_geometric_sum() -> None:
    assert expected_accepted(0.5, 2) == pytest.approx(0.75)
    assert expected_accepted(1.0, 5) == 5.0
    assert expected_accepted(0.0, 5) == 0.0


def test_costs_interpolate_and_extrapolate_optimistically() -> None:
    model = costs({4: 28.0, 8: 40.0})
    assert model.estimate(6) == pytest.approx(34.0)
    assert model.estimate(3) is None  # below the smallest measured size: unknown
    beyond = model.estimate(16)
    assert beyond is not None and 40.0 < beyond < 80.0  # less than linear: worth a try


def test_a_slow_measurement_moves_an_estimate_only_a_little() -> None:
    model = costs({1: 10.0})
    model.record(1, 100.0)  # one slow moment
    assert model.estimate(1) == pytest.approx(14.5)
    model.record(1, 9.0)  # a faster one sets it
    assert model.estimate(1) == 9.0


def test_a_large_size_measured_slow_is_capped_by_a_smaller_one() -> None:
    model = costs({1: 10.0, 8: 40.0, 16: 200.0})
    assert model.estimate(16) == pytest.approx(80.0)


def test_only_measured_sizes_are_planned() -> None:
    # 9 to 15 rows lie between measured 8 and 16 but may cost more than both on a CPU whose
    # kernels take rows in fours: with 14 guesses, 8 rows, not 15 at an interpolated cost.
    chosen = plan(1, [Candidate(0, [5] * 14, rate=0.99)], costs(), max_rows=64)
    assert chosen == {0: 7}


def test_unlikely_guesses_are_not_verified() -> None:
    # Two rows cost two steps here: a guess right half the time never pays.
    chosen = plan(1, [Candidate(0, [5] * 8, rate=0.5)], costs(), max_rows=64)
    assert chosen == {}


def test_likely_guesses_fill_a_cheap_shape() -> None:
    chosen = plan(1, [Candidate(0, [5] * 20, rate=0.95)], costs(), max_rows=64)
    # 16 rows (53 ms for up to 16 tokens) beats 8 rows, and 5 to 7 rows are never worth it.
    assert chosen == {0: 15}


def test_rows_never_exceed_the_bound() -> None:
    candidates = [Candidate(slot, [5] * MAX_GUESSES, rate=0.99) for slot in range(4)]
    chosen = plan(4, candidates, costs(), max_rows=20)
    assert 4 + sum(chosen.values()) <= 20


def test_an_exact_count_is_taken_whatever_it_costs() -> None:
    chosen = plan(1, [Candidate(0, [5] * 8, rate=0.1, exact=2)], costs(), max_rows=64)
    assert chosen == {0: 2}
    short = plan(1, [Candidate(0, [5], rate=0.1, exact=4)], costs(), max_rows=64)
    assert short == {0: 1}  # no more guesses than there are


def test_nothing_is_planned_before_costs_are_known() -> None:
    assert plan(1, [Candidate(0, [5] * 8, rate=0.99)], Costs(), max_rows=64) == {}
