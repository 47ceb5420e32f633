from __future__ import annotations

import random

import msgspec
import orjson

from service.domain.tasks import Observation, StoredTask
from service.domain.times import format_time
from service.domain.tracker import Departure, TaskView, Tracker, estimate_completion
from service.snapshot.render import task_head, task_json

TTL = 3600
T0 = 1_795_000_000_000


def task(task_id: str, progress: int, **kw: object) -> StoredTask:
    fields: dict[str, object] = {
        "task_id": task_id,
        "process": "processing",
        "total_progress": progress,
        "file_list": b'[{"path":"a","status":"pending","operate":"add"}]',
        "file_count": 1,
        "client_id": "",
        "start_ms": None,
        "update_ms": None,
    }
    fields.update(kw)
    return StoredTask(**fields)  # type: ignore[arg-type]


def obs(t: StoredTask, seen_ms: int, pttl: int = -1) -> Observation:
    return Observation(t, hash((t.task_id, t.total_progress, t.process, t.update_ms)), pttl, seen_ms)


def scan(tracker: Tracker, *observations: Observation) -> list[str]:
    tracker.begin_scan()
    tracker.observe(observations)
    return tracker.end_scan()


def as_json(tracker: Tracker) -> list[dict[str, object]]:
    # as the snapshot renders them
    return [orjson.loads(task_json(v, task_head(v))) for v in tracker.views()]


def test_without_ttl_times_are_first_sightings() -> None:
    tracker = Tracker(producer_key_ttl=0)
    scan(tracker, obs(task("a", 10), T0))
    scan(tracker, obs(task("a", 10), T0 + 2000))  # same value: nothing changes
    (view,) = tracker.views()
    assert (view.start_ms, view.update_ms) == (T0, T0)
    scan(tracker, obs(task("a", 20), T0 + 4000))
    (view,) = tracker.views()
    assert (view.start_ms, view.update_ms) == (T0, T0 + 4000)


def test_update_time_comes_from_the_remaining_ttl() -> None:
    tracker = Tracker(producer_key_ttl=TTL)
    # written 30 s before it was read: 3570 s left of 3600
    scan(tracker, obs(task("a", 10), T0, pttl=3_570_000))
    (view,) = tracker.views()
    assert view.update_ms == T0 - 30_000
    assert view.start_ms == T0 - 30_000  # the first evidence of the task is that write
    # read again 2 s later, unchanged and not rewritten: the derived time stays put despite jitter
    scan(tracker, obs(task("a", 10), T0 + 2000, pttl=3_568_000 - 3))
    assert tracker.views()[0].update_ms == T0 - 30_000
    # rewritten with the same bytes (TTL reset) 10 s later: a later write
    scan(tracker, obs(task("a", 10), T0 + 12_000, pttl=3_600_000))
    assert tracker.views()[0].update_ms == T0 + 12_000


def test_ttl_is_ignored_when_it_cannot_be_the_producers() -> None:
    tracker = Tracker(producer_key_ttl=TTL)
    scan(tracker, obs(task("a", 10), T0, pttl=-1), obs(task("b", 10), T0, pttl=7_200_000))
    assert {v.task_id: v.update_ms for v in tracker.views()} == {"a": T0, "b": T0}


def test_producer_times_win() -> None:
    tracker = Tracker(producer_key_ttl=TTL)
    scan(tracker, obs(task("a", 10, start_ms=T0 - 99_000, update_ms=T0 - 5_000, client_id="c1"), T0, pttl=5))
    (body,) = as_json(tracker)
    assert body["startTime"] == format_time(T0 - 99_000)
    assert body["lastUpdateTime"] == format_time(T0 - 5_000)
    assert body["clientId"] == "c1"


def test_estimate_needs_an_observed_rate() -> None:
    tracker = Tracker(producer_key_ttl=0)
    scan(tracker, obs(task("a", 20), T0))
    assert "estimatedCompletionTime" not in as_json(tracker)[0]  # one sighting: no rate yet
    scan(tracker, obs(task("a", 40), T0 + 10_000))
    # 20 % in 10 s: 60 % more takes 30 s from the last change
    assert tracker.views()[0].eta_ms == T0 + 40_000
    assert as_json(tracker)[0]["estimatedCompletionTime"] == format_time(T0 + 40_000)
    scan(tracker, obs(task("a", 100), T0 + 20_000))
    assert "estimatedCompletionTime" not in as_json(tracker)[0]  # at 100 %


def test_estimate_functions_edges() -> None:
    assert estimate_completion((T0, 0), (T0, 0), T0) is None
    assert estimate_completion((T0, 0), (T0 + 1000, 0), T0) is None  # 0 %
    assert estimate_completion((T0, 50), (T0 + 1000, 40), T0) is None  # went back
    assert estimate_completion((T0, 0), (T0 + 10_000, 50), T0 + 10_000) == T0 + 20_000
    # late: 50 % by T0+10 s but still 50 % at T0+60 s: the rate up to now gives another 60 s from now
    assert estimate_completion((T0, 0), (T0 + 10_000, 50), T0 + 60_000) == T0 + 120_000


def test_progress_going_back_restarts_the_rate() -> None:
    tracker = Tracker(producer_key_ttl=0)
    scan(tracker, obs(task("a", 50), T0))
    scan(tracker, obs(task("a", 60), T0 + 1000))
    scan(tracker, obs(task("a", 10), T0 + 2000))
    assert tracker.views()[0].eta_ms is None
    scan(tracker, obs(task("a", 20), T0 + 3000))
    assert tracker.views()[0].eta_ms == T0 + 3000 + 8000


def test_order_is_newest_start_first_ties_by_id() -> None:
    tracker = Tracker(producer_key_ttl=0)
    scan(tracker, obs(task("b", 1), T0), obs(task("a", 1), T0), obs(task("c", 1), T0 + 5))
    assert [v.task_id for v in tracker.views()] == ["c", "a", "b"]


def test_tasks_not_seen_by_a_complete_scan_are_forgotten() -> None:
    tracker = Tracker(producer_key_ttl=0)
    scan(tracker, obs(task("a", 1), T0), obs(task("b", 1), T0))
    assert scan(tracker, obs(task("b", 1), T0 + 1)) == ["a"]
    assert [v.task_id for v in tracker.views()] == ["b"]
    # seen again later: a new task as far as this service knows
    scan(tracker, obs(task("a", 1), T0 + 9), obs(task("b", 1), T0 + 9))
    assert [v.start_ms for v in tracker.views()] == [T0 + 9, T0]


def test_unchanged_tasks_keep_their_rendered_json() -> None:
    tracker = Tracker(producer_key_ttl=0)
    scan(tracker, obs(task("a", 1), T0))
    before = tracker.views()[0]
    scan(tracker, obs(task("a", 1), T0 + 2000))
    assert tracker.views()[0] is before


def test_rendered_task_has_the_contract_fields_in_order() -> None:
    tracker = Tracker(producer_key_ttl=0)
    scan(tracker, obs(task("a", 10), T0))
    scan(tracker, obs(task("a", 20), T0 + 1000))
    body = as_json(tracker)[0]
    assert list(body) == [
        "taskId",
        "clientId",
        "status",
        "process",
        "totalProgress",
        "startTime",
        "lastUpdateTime",
        "estimatedCompletionTime",
        "stalled",
        "fileList",
    ]
    assert body["status"] == body["process"] == "processing"
    assert body["fileList"] == [{"path": "a", "status": "pending", "operate": "add"}]


def test_a_late_estimate_is_renewed_only_once_it_has_passed() -> None:
    tracker = Tracker(producer_key_ttl=0)
    scan(tracker, obs(task("a", 0), T0))
    scan(tracker, obs(task("a", 50), T0 + 10_000))
    assert tracker.views()[0].eta_ms == T0 + 20_000
    scan(tracker, obs(task("a", 50), T0 + 15_000))
    assert tracker.views()[0].eta_ms == T0 + 20_000  # still ahead: unchanged, same rendered view
    view = tracker.views()[0]
    scan(tracker, obs(task("a", 50), T0 + 30_000))  # passed: re-estimated from the rate up to now
    assert tracker.views()[0].eta_ms == T0 + 60_000
    scan(tracker, obs(task("a", 50), T0 + 40_000))
    assert tracker.views()[0].eta_ms == T0 + 60_000
    assert tracker.views()[0] is not view


# -- stalled, progress rate and departures (the query API) --------------------------------------------------


def test_a_task_turns_stalled_by_time_alone_and_is_re_rendered_at_that_scan() -> None:
    tracker = Tracker(producer_key_ttl=0, stall_after=300)
    scan(tracker, obs(task("a", 10), T0))
    first = tracker.views()[0]
    assert first.stalled is False
    scan(tracker, obs(task("a", 10), T0 + 299_999))  # unchanged, not yet 300 s
    assert tracker.views()[0] is first
    scan(tracker, obs(task("a", 10), T0 + 300_000))  # same value: only time made it stalled
    flipped = tracker.views()[0]
    assert flipped is not first
    assert flipped.stalled is True
    assert as_json(tracker)[0]["stalled"] is True
    scan(tracker, obs(task("a", 10), T0 + 302_000))  # still stalled: nothing new to render
    assert tracker.views()[0] is flipped
    scan(tracker, obs(task("a", 11), T0 + 304_000))  # it moved: no longer stalled
    assert tracker.views()[0].stalled is False


def test_stalled_at_first_sight_when_the_ttl_shows_an_old_write() -> None:
    tracker = Tracker(producer_key_ttl=TTL, stall_after=300)
    # 3000 s left of 3600: last written 10 minutes before it was read
    scan(tracker, obs(task("old", 10), T0, pttl=3_000_000), obs(task("fresh", 10), T0, pttl=3_599_000))
    assert {v.task_id: v.stalled for v in tracker.views()} == {"old": True, "fresh": False}


def test_progress_rate_in_percent_per_minute() -> None:
    tracker = Tracker(producer_key_ttl=0)
    scan(tracker, obs(task("a", 10), T0))
    assert tracker.views()[0].rate is None  # one point: no rate
    scan(tracker, obs(task("a", 40), T0 + 120_000))  # 30 % in 2 minutes
    assert tracker.views()[0].rate == 15.0


def departures_of(tracker: Tracker) -> list[Departure]:
    seen: list[Departure] = []
    tracker._on_departures = seen.extend
    return seen


def test_departures_say_why_a_task_left() -> None:
    tracker = Tracker(producer_key_ttl=TTL)
    got = departures_of(tracker)
    scan(tracker, obs(task("done", 50), T0, pttl=3_600_000), obs(task("gone", 20), T0, pttl=3_600_000))
    scan(tracker, obs(task("done", 60), T0 + 2000, pttl=3_600_000), obs(task("gone", 20), T0 + 2000, pttl=3_598_000))
    tracker.begin_scan()
    # the finished value was written 1 s before this scan read it
    tracker.observe_finished([obs(task("done", 100, process="completed"), T0 + 4000, pttl=3_599_000)])
    tracker.observe_finished([obs(task("never-seen-running", 100, process="failed"), T0 + 4000)])
    assert tracker.end_scan() == ["done", "gone"]
    by_id = {d.view.task_id: d for d in got}
    assert set(by_id) == {"done", "gone"}  # a task never seen running is not a departure
    done, gone = by_id["done"], by_id["gone"]
    assert done.final is not None and done.final.process == "completed"
    assert done.end_ms == T0 + 3000
    assert done.last_seen_ms == T0 + 2000
    assert done.view.total_progress == 60
    assert gone.final is None  # vanished: no finished value was read
    assert gone.end_ms == gone.last_seen_ms == T0 + 2000


def test_what_a_failed_scan_saw_finish_is_kept_for_the_next_complete_scan() -> None:
    tracker = Tracker(producer_key_ttl=0)
    got = departures_of(tracker)
    scan(tracker, obs(task("a", 50), T0))
    tracker.begin_scan()  # this scan fails after reading "a" finished: end_scan is never called
    tracker.observe_finished([obs(task("a", 100, process="failed"), T0 + 1000)])
    assert got == []
    tracker.begin_scan()  # the next scan does not decode that value again (the scanner remembers it)
    assert tracker.end_scan() == ["a"]
    assert got[0].final is not None and got[0].final.process == "failed"
    scan(tracker)  # and a complete scan clears it
    assert len(got) == 1


def test_a_task_that_reappears_is_a_new_run() -> None:
    tracker = Tracker(producer_key_ttl=0)
    got = departures_of(tracker)
    scan(tracker, obs(task("a", 50), T0))
    tracker.begin_scan()
    tracker.observe_finished([obs(task("a", 100, process="completed"), T0 + 1000)])
    tracker.end_scan()
    scan(tracker, obs(task("a", 5), T0 + 60_000))  # the same id running again
    (view,) = tracker.views()
    assert view.start_ms == T0 + 60_000
    scan(tracker)
    assert [(d.view.start_ms, d.final is None) for d in got] == [(T0, False), (T0 + 60_000, True)]


# -- writers that keep the TTL, clocks that run ahead (issue 15, items 6 and 7) ----------------------------------


def test_a_value_that_changed_under_a_kept_ttl_is_not_older_than_the_scan_before() -> None:
    # SET ... KEEPTTL: the value moves, the TTL keeps counting down from the first write at T0 - 10 s
    tracker = Tracker(producer_key_ttl=TTL, stall_after=60)
    written = T0 - 10_000
    for step, progress in enumerate(range(10, 100, 10)):
        seen = T0 + step * 30_000
        scan(tracker, obs(task("a", progress), seen, pttl=TTL * 1000 - (seen - written)))
        (view,) = tracker.views()
        previous_scan = seen - 30_000 if step else written
        assert view.update_ms >= previous_scan, progress
        assert not view.stalled, progress  # it moves every 30 s: never stalled with stall_after = 60 s
    # read again unchanged, the TTL still telling of the first write: the time found stays, it never goes back
    scan(tracker, obs(task("a", 90), T0 + 9 * 30_000, pttl=TTL * 1000 - (T0 + 9 * 30_000 - written)))
    assert tracker.views()[0].update_ms == T0 + 7 * 30_000
    # once it stops moving, stall_after later it is stalled, as any task
    scan(tracker, obs(task("a", 90), T0 + 7 * 30_000 + 61_000, pttl=1_000_000))
    assert tracker.views()[0].stalled


def test_producer_times_in_the_future_are_clamped_to_the_scan_and_counted() -> None:
    tracker = Tracker(producer_key_ttl=TTL)
    hour = 3_600_000
    scan(tracker, obs(task("a", 10, update_ms=T0 + hour, start_ms=T0 + hour), T0))
    (view,) = tracker.views()
    assert (view.start_ms, view.update_ms) == (T0, T0)
    assert tracker.future_times == 2  # its start and its write time
    # the same value read again: the same clamped times, not counted again
    scan(tracker, obs(task("a", 10, update_ms=T0 + hour, start_ms=T0 + hour), T0 + 2000))
    (view,) = tracker.views()
    assert (view.start_ms, view.update_ms) == (T0, T0)
    assert tracker.future_times == 2
    # a new value, its write time still ahead: clamped to this scan, counted once more
    scan(tracker, obs(task("a", 20, update_ms=T0 + hour + 5, start_ms=T0 + hour), T0 + 4000))
    assert tracker.views()[0].update_ms == T0 + 4000
    assert tracker.future_times == 3
    as_served = as_json(tracker)[0]
    assert as_served["lastUpdateTime"] == format_time(T0 + 4000)
    assert as_served["startTime"] == format_time(T0)


def test_a_finished_value_whose_start_is_after_its_end_is_counted() -> None:
    departures: list[Departure] = []
    tracker = Tracker(producer_key_ttl=0, on_departures=departures.extend)
    scan(tracker, obs(task("a", 50), T0))
    tracker.begin_scan()
    tracker.observe_finished(
        [obs(task("a", 100, process="completed", start_ms=T0 + 9000, update_ms=T0 + 5000), T0 + 6000)]
    )
    tracker.end_scan()
    (departure,) = departures
    assert departure.end_ms == T0 + 5000
    assert tracker.future_times == 1


def _retimed_by_a_full_pass(views: dict[str, TaskView], tracker: Tracker, now_ms: int) -> dict[str, TaskView]:
    """What retime did before it kept a schedule: every task looked at, every time."""
    changed: dict[str, TaskView] = {}
    for task_id, view in views.items():
        state = tracker._states[task_id]
        stalled = now_ms - view.update_ms >= tracker._stall_ms
        eta_ms = view.eta_ms
        if eta_ms is not None and eta_ms < now_ms:
            eta_ms = estimate_completion(state.anchor, state.last, now_ms)
        if stalled != view.stalled or eta_ms != view.eta_ms:
            changed[task_id] = msgspec.structs.replace(view, stalled=stalled, eta_ms=eta_ms)
    return changed


def test_retime_changes_what_a_full_pass_changes_and_looks_only_at_what_came_due() -> None:
    rng = random.Random(4)
    tracker = Tracker(producer_key_ttl=0, stall_after=30)
    now = 1_000_000
    progress = {f"t{i}": rng.randrange(1, 50) for i in range(300)}
    scan(tracker, *(obs(task(task_id, p, update_ms=now), now) for task_id, p in progress.items()))
    for step in range(120):
        now += rng.choice([500, 1000, 3000])
        moved = rng.sample(sorted(progress), 20)
        if step % 3 == 0:  # a feed's batch: a few tasks move
            for task_id in moved:
                progress[task_id] = min(progress[task_id] + rng.randrange(1, 4), 99)
            tracker.apply([obs(task(t, progress[t], update_ms=now), now) for t in moved], [], [])
        views = {view.task_id: view for view in tracker.views()}
        expected = _retimed_by_a_full_pass(views, tracker, now)
        changed = tracker.retime(now)
        assert changed == expected
        assert {view.task_id: view for view in tracker.views()} == {**views, **expected}
        assert len(tracker._due) <= 2 * len(progress)  # a task's entry, and at most one superseded by an earlier
    assert any(view.stalled for view in tracker.views())


def test_take_renewed_hands_out_what_scans_changed_and_nothing_batches_or_ticks_handed_out() -> None:
    tracker = Tracker(producer_key_ttl=0, stall_after=30)
    now = T0
    scan(tracker, obs(task("a", 10), now), obs(task("b", 10), now), obs(task("c", 10), now))
    assert set(tracker.take_renewed() or ()) == {"a", "b", "c"}  # new to the snapshot
    assert tracker.take_renewed() == {}
    tracker.apply([obs(task("a", 20), now + 1000)], [], [])  # a batch: installed by the batch itself
    tracker.retime(now + 31_000)  # a tick: every task turns stalled, installed by the tick itself
    assert tracker.take_renewed() == {}
    tracker.begin_scan()
    tracker.observe(
        [obs(task("a", 20), now + 40_000), obs(task("b", 50), now + 40_000), obs(task("c", 10), now + 40_000)]
    )
    # a scan that fails here leaves what it changed for the next one to hand out
    tracker.begin_scan()
    tracker.observe(
        [obs(task("a", 20), now + 41_000), obs(task("b", 50), now + 41_000), obs(task("c", 10), now + 41_000)]
    )
    tracker.end_scan()
    assert set(tracker.take_renewed() or ()) == {"b"}


def test_take_renewed_past_its_limit_gathers_nothing_and_still_hands_out() -> None:
    tracker = Tracker(producer_key_ttl=0, stall_after=30)
    scan(tracker, obs(task("a", 10), T0), obs(task("b", 10), T0), obs(task("c", 10), T0))
    assert tracker.take_renewed(limit=2) is None  # more than the caller would update: it renders everything
    assert tracker.take_renewed(limit=2) == {}


def test_a_batch_that_moves_a_task_the_running_scan_just_added_keeps_the_order_whole() -> None:
    # A scan's page adds "new" (sorted into the order only at the scan's end); a change feed's batch then reads it
    # with a producer start time that moves it. Every task stays in the order once, in its place.
    tracker = Tracker(producer_key_ttl=0)
    scan(tracker, *(obs(task(f"old{i}", 10), T0 + i) for i in range(5)))
    tracker.begin_scan()
    tracker.observe([obs(task("new", 10), T0 + 10_000)])
    tracker.apply([obs(task("new", 20, start_ms=T0 + 2), T0 + 10_001)], [], [])
    tracker.observe([obs(task(f"old{i}", 10), T0 + 10_000 + i) for i in range(5)])
    assert tracker.end_scan() == []
    views = tracker.views()
    assert sorted(view.task_id for view in views) == ["new", "old0", "old1", "old2", "old3", "old4"]
    assert [view.task_id for view in views] == ["old4", "old3", "new", "old2", "old1", "old0"]
