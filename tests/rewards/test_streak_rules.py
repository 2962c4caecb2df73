"""The Smart Streaks rules as pure functions (server.ledger.streaks.advance / view)."""

from __future__ import annotations

import datetime as dt

from creditwallet.server.ledger import streaks

MILESTONES = [(3, 1_000_000), (7, 5_000_000), (14, 10_000_000), (30, 25_000_000)]
D0 = dt.date(2027, 1, 28)


def day(n: int) -> dt.date:
    return D0 + dt.timedelta(days=n)


def run(active_days: list[int]) -> streaks.State:
    state: streaks.State | None = None
    for n in active_days:
        state = streaks.advance(state, day(n)) or state
    assert state is not None
    return state


def test_consecutive_days_count() -> None:
    state = run([0, 1, 2, 3])
    assert (state.current_days, state.streak_start, state.grace_day) == (4, day(0), None)


def test_one_missed_day_is_forgiven_and_not_counted() -> None:
    state = run([0, 1, 3])
    assert state.current_days == 3
    assert state.grace_day == day(2)
    assert state.streak_start == day(0)


def test_two_missed_days_in_a_row_start_a_new_streak() -> None:
    state = run([0, 1, 2, 5])
    assert (state.current_days, state.streak_start, state.longest_days) == (1, day(5), 3)


def test_second_missed_day_within_seven_days_breaks() -> None:
    # Missed days 2 and 8: six days apart, both inside one 7-day window.
    state = run([0, 1, 3, 4, 5, 6, 7, 9])
    assert (state.current_days, state.streak_start) == (1, day(9))


def test_missed_days_seven_apart_are_both_forgiven() -> None:
    # Missed days 2 and 9: no 7 consecutive days hold both.
    state = run([0, 1, 3, 4, 5, 6, 7, 8, 10])
    assert (state.current_days, state.streak_start, state.grace_day) == (9, day(0), day(9))


def test_same_day_or_earlier_changes_nothing() -> None:
    state = run([0, 1])
    assert streaks.advance(state, day(1)) is None
    assert streaks.advance(state, day(0)) is None


def test_view_reads_zero_once_the_streak_cannot_continue() -> None:
    state = run([0, 1, 2, 3])
    assert streaks.view(state, day(4), MILESTONES).current_days == 4
    pending = streaks.view(state, day(5), MILESTONES)
    assert (pending.current_days, pending.grace_day_used) == (4, True)
    broken = streaks.view(state, day(6), MILESTONES)
    assert (broken.current_days, broken.longest_days, broken.grace_day_used) == (0, 4, False)
    assert (broken.next_milestone_days, broken.next_milestone_reward_micros) == (3, 1_000_000)
    assert broken.last_active_day == day(3)


def test_view_pending_miss_breaks_when_grace_was_used_recently() -> None:
    state = run([0, 1, 3, 4])  # forgave day 2
    assert streaks.view(state, day(5), MILESTONES).grace_day_used
    assert streaks.view(state, day(6), MILESTONES).current_days == 0


def test_view_grace_frees_up_after_seven_days() -> None:
    state = run([0, 1, 3, 4, 5, 6, 7, 8])  # forgave day 2; the next miss would be day 9
    assert not streaks.view(state, day(8), MILESTONES).grace_day_used
    state = run([0, 1, 3, 4, 5, 6, 7])  # the next miss would be day 8: too close
    assert streaks.view(state, day(7), MILESTONES).grace_day_used


def test_view_next_milestone() -> None:
    view = streaks.view(run(list(range(7))), day(6), MILESTONES)
    assert (view.current_days, view.next_milestone_days) == (7, 14)
    done = streaks.view(run(list(range(30))), day(29), MILESTONES)
    assert (done.next_milestone_days, done.next_milestone_reward_micros) == (0, 0)
    assert streaks.view(None, day(0), MILESTONES).next_milestone_days == 3
