"""Answers the query API from the current snapshot and the finished-task history, each distinct answer rendered
once: results are cached by (what they were computed from, normalised query), and so are their ETags."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator

from service.domain.history import History
from service.domain.times import format_time
from service.query.deltas import delta, parse_since, since_answer, snapshot_data, view_of
from service.query.finished import FinishedQuery, parse_finished_query, render_finished
from service.query.params import Params
from service.query.project import Projection, parse_projection, render_task
from service.query.result_cache import ResultCache, content_etag, derived_etag
from service.query.running import Query, paginate, parse_query, render_page
from service.query.running import select as select_running
from service.query.stats import task_stats
from service.settings import RunningTasksSettings
from service.shapes.envelope import encode_ok, ok_body
from service.shapes.operations import HistoryInfo, QueryCacheInfo
from service.snapshot.body import Rendered
from service.snapshot.changes import ChangeLog
from service.snapshot.snapshot import Snapshot


class QueryService:
    """The logic behind the query endpoints; handlers only parse the request and send what this returns."""

    def __init__(self, settings: RunningTasksSettings, history: History) -> None:
        self._settings = settings
        self.history = history
        self.cache = ResultCache(settings.query_cache_size, settings.query_cache_bytes)
        self._token = secrets.token_hex(4)  # tags of another process never match this one's

    # -- parsing (raises QueryError) -------------------------------------------------------------------

    def parse_running(self, items: Iterable[tuple[str, str]]) -> Query:
        return parse_query(items, self._settings.running_statuses)

    def parse_since(self, items: Iterable[tuple[str, str]]) -> int | None:
        return parse_since(items)

    def parse_task(self, items: Iterable[tuple[str, str]]) -> Projection:
        return parse_projection(Params(items))

    def parse_finished(self, items: Iterable[tuple[str, str]]) -> FinishedQuery:
        return parse_finished_query(items)

    # -- answers ---------------------------------------------------------------------------------------

    def running(self, snapshot: Snapshot, query: Query) -> Rendered:
        """The running list as `query` shapes it; the snapshot's own body when the query changes nothing (no
        parameter, `page=1` alone, unknown parameters). Keyed by the snapshot's ETag (equal bodies)."""
        if query.is_default:
            return snapshot.rendered

        def render() -> Rendered:
            page = paginate(select_running(snapshot.tasks, query), query.paging)
            return Rendered.of(render_page(page, query.projection, snapshot.head), derived_etag(snapshot.etag, query))

        return self.cache.get_or_render(("running", snapshot.etag, query), render)

    def since(self, snapshot: Snapshot, query: Query, generation: int, log: ChangeLog) -> Rendered:
        """The running list's `since=<generation>` answer for the view of `query`: what changed after
        `generation`, from the change log, or every task of the view in `snapshot` flagged as a reset when the log
        no longer holds that generation. Its ETag follows its content."""
        view = view_of(query)
        changes = log.since(generation)
        if changes is None:
            key: tuple[object, ...] = ("since-reset", snapshot.etag, snapshot.generation, view)
        else:
            changes = [change for change in changes if change.generation <= snapshot.generation]
            key = ("since", view, generation, changes[-1].generation if changes else generation)

        def render() -> Rendered:
            change = None if changes is None else delta(changes, view, generation)
            body = since_answer(change, snapshot, view)
            return Rendered.of(body, content_etag(body))

        return self.cache.get_or_render(key, render)

    def stream_snapshot(self, snapshot: Snapshot, view: Query) -> Iterator[bytes]:
        """The event stream's `snapshot` event data for `view` (see service.query.deltas.view_of): the running
        list's data, rendered once per snapshot and view, with the generation."""
        return snapshot_data(self.running(snapshot, view).body.chunks, snapshot.generation)

    def task(self, snapshot: Snapshot, task_id: str, projection: Projection) -> Rendered | None:
        """One running task, or None; its ETag follows its content, so it survives changes to other tasks."""
        entry = snapshot.entries.get(task_id)
        if entry is None:
            return None
        view = entry.view

        def render() -> Rendered:
            body = ok_body(render_task(view, snapshot.head(view), projection))
            return Rendered.of(body, content_etag(body))

        return self.cache.get_or_render(("task", snapshot.etag, task_id, projection), render)

    def not_running(self, task_id: str) -> str:
        """Why `task_id` is not in the running list, as precisely as the history knows."""
        record = self.history.latest(task_id)
        if record is None:
            return f"task {task_id!r} is not running"
        return (
            f"task {task_id!r} is not running: it left the running state as {record.outcome} "
            f"at {format_time(record.end_ms)} (see /tasks/finished)"
        )

    def finished(self, query: FinishedQuery) -> Rendered:
        history = self.history
        base = f"{self._token}-h{history.version}"

        def render() -> Rendered:
            return Rendered.of(render_finished(history, query), derived_etag(base, query))

        return self.cache.get_or_render(("finished", base, query), render)

    def stats(self, snapshot: Snapshot) -> Rendered:
        # keyed by generation, not ETag: the windows are measured from the snapshot's build time
        base = f"{self._token}-s{snapshot.generation}-h{self.history.version}"
        rt = self._settings

        def render() -> Rendered:
            data = task_stats(snapshot, self.history, rt.running_statuses, rt.stall_after)
            return Rendered.of(encode_ok(data), f'"{base}"')

        return self.cache.get_or_render(("stats", base), render)

    def forget(self) -> None:
        """Drop every cached answer: the next query is computed as on a new snapshot."""
        self.cache.clear()

    def cache_stats(self) -> QueryCacheInfo:
        history = self.history
        return QueryCacheInfo(
            **self.cache.stats(),
            history=HistoryInfo(kept=len(history), size=history.size, version=history.version),
        )
