"""The running list's query: parse and validate the query string into a frozen, normalised `Query`, apply it to
a snapshot's tasks (filter, sort, page) and render the page, re-using each task's pre-rendered JSON."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import TypeVar

import msgspec
import orjson

from service.domain.tasks import format_time
from service.domain.tracker import TaskView

MAX_PAGE = 10**9
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100  # when `page` is given without `pageSize`
MAX_VALUES = 1000  # values of one list parameter (clientId, status, ...)
EPOCH_MS_MAX_DIGITS = 15  # up to the year 33658: every instant an RFC 3339 time can name, and more

# The task object's fields in the contract's order; `fileList` is the file part, shaped by `fileList=`.
TASK_FIELDS = (
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
)
BASE_FIELDS = TASK_FIELDS[:-1]
FILE_LIST_MODES = ("full", "summary", "none")
SORT_KEYS = {
    "startTime": "start_ms",
    "lastUpdateTime": "update_ms",
    "totalProgress": "total_progress",
    "taskId": "task_id",
}
DEFAULT_SORT: tuple[tuple[str, bool], ...] = (("startTime", True),)  # (key, descending): the snapshot's order
FILE_STATUSES = ("pending", "processing", "completed", "unsupported", "failed")
FILE_OPERATES = ("add", "modify", "delete", "rename")
TIME_ACCEPTED = (
    f"an RFC 3339 time such as 2026-11-28T01:02:03Z, or epoch milliseconds (at most {EPOCH_MS_MAX_DIGITS} digits)"
)

# A `+` in a query string is a space once decoded: `...T01:00:00+08:00` sent unencoded arrives as `... 08:00`.
_LOST_PLUS = re.compile(r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:?\d{2})$")
_FILE_LIST_KEY = b',"fileList":'


class QueryError(ValueError):
    """A query parameter with a value that is not accepted; rendered as a 400 envelope naming the parameter."""

    def __init__(self, parameter: str, value: str, accepted: str) -> None:
        super().__init__(f"{parameter}: {value!r} is not accepted; expected {accepted}")
        self.parameter = parameter
        self.value = value
        self.accepted = accepted

    def as_data(self) -> dict[str, str]:
        return {"parameter": self.parameter, "value": self.value, "accepted": self.accepted}


@dataclass(frozen=True, slots=True)
class Paging:
    page: int
    page_size: int


@dataclass(frozen=True, slots=True)
class Projection:
    """Which task fields a response carries and how its file list is shaped."""

    fields: tuple[str, ...] = BASE_FIELDS  # in contract order, without fileList
    file_list: str = "full"  # full | summary | none

    @property
    def is_default(self) -> bool:
        return self.fields == BASE_FIELDS and self.file_list == "full"


@dataclass(frozen=True, slots=True)
class Query:
    """A normalised running-list query: equal queries are equal objects (the result cache's key)."""

    client_ids: tuple[str, ...] | None = None  # sorted, distinct
    statuses: tuple[str, ...] | None = None
    started_after: int | None = None  # epoch ms, inclusive
    started_before: int | None = None  # exclusive
    updated_after: int | None = None
    updated_before: int | None = None
    stalled: bool | None = None
    sort: tuple[tuple[str, bool], ...] = DEFAULT_SORT
    paging: Paging | None = None
    projection: Projection = Projection()

    @property
    def is_default(self) -> bool:
        """Asks for exactly what the unfiltered read serves: the snapshot's own body answers it."""
        return self == _DEFAULT_QUERY


_DEFAULT_QUERY = Query()


@dataclass(frozen=True, slots=True)
class Page:
    """The tasks of one page and what the envelope says about them."""

    total: int
    tasks: list[TaskView]
    paging: Paging | None


# -- parsing -----------------------------------------------------------------------------------------------


class Params:
    """The query string's (name, value) pairs; a parameter given empty counts as absent."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in items:
            if value.strip():
                self._values.setdefault(name, []).append(value)

    def single(self, name: str) -> str | None:
        values = self._values.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise QueryError(name, ",".join(values), "a single value (the parameter is given more than once)")
        return values[0].strip()

    def many(self, name: str) -> list[str] | None:
        """A repeatable, comma-separated parameter: its distinct values, in order of appearance; empty ones are
        ignored but, like repeats, count towards the MAX_VALUES a request may send."""
        values = self._values.get(name)
        if not values:
            return None
        parts = [part for value in values for part in value.split(",")]
        if len(parts) > MAX_VALUES:
            raise QueryError(name, f"{len(parts)} values", f"at most {MAX_VALUES} values")
        items = list(dict.fromkeys(part.strip() for part in parts if part.strip()))
        return items or None


def parse_choices(
    params: Params, name: str, accepted: Sequence[str], aliases: dict[str, str] | None = None
) -> tuple[str, ...] | None:
    """A list parameter whose values must come from `accepted` (case-sensitive); sorted and distinct."""
    values = params.many(name)
    if values is None:
        return None
    aliases = aliases or {}
    chosen: set[str] = set()
    for value in values:
        value = aliases.get(value, value)
        if value not in accepted:
            raise QueryError(name, value, "one or more of " + ", ".join(accepted))
        chosen.add(value)
    return tuple(sorted(chosen))


def parse_instant(name: str, raw: str) -> int:
    """Epoch milliseconds from RFC 3339 text (a time without an offset is read as UTC) or epoch milliseconds."""
    text = raw.strip()
    if _is_ascii_number(text):
        if len(text) > EPOCH_MS_MAX_DIGITS:
            raise QueryError(name, raw, TIME_ACCEPTED)
        return int(text)
    try:
        parsed = datetime.fromisoformat(_LOST_PLUS.sub(r"\1+\2", text))
    except ValueError:
        raise QueryError(name, raw, TIME_ACCEPTED) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return round(parsed.timestamp() * 1000)


def parse_range(params: Params, after_name: str, before_name: str) -> tuple[int | None, int | None]:
    """A half-open time range `after <= t < before`; either end may be open."""
    after_raw, before_raw = params.single(after_name), params.single(before_name)
    after = None if after_raw is None else parse_instant(after_name, after_raw)
    before = None if before_raw is None else parse_instant(before_name, before_raw)
    if after is not None and before is not None and after >= before:
        raise QueryError(before_name, before_raw or "", f"a time later than {after_name} ({after_raw})")
    return after, before


def parse_bool(params: Params, name: str) -> bool | None:
    raw = params.single(name)
    if raw is None:
        return None
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise QueryError(name, raw, "true or false")


def _parse_int(params: Params, name: str, low: int, high: int) -> int | None:
    raw = params.single(name)
    if raw is None:
        return None
    # the length check first: int() of thousands of digits is slow, and refused past 4300
    if not _is_ascii_number(raw) or len(raw.lstrip("0")) > len(str(high)) or not low <= int(raw) <= high:
        raise QueryError(name, raw, f"an integer from {low} to {high}")
    return int(raw)


def _is_ascii_number(text: str) -> bool:
    # str.isdigit() also holds for digits int() refuses ("²") and for other scripts' digits ("٣")
    return text.isascii() and text.isdigit()


def parse_paging(params: Params, default_size: int | None = None) -> Paging | None:
    """`page` (from 1) and `pageSize` (1-1000); None when neither is given and there is no default size."""
    page = _parse_int(params, "page", 1, MAX_PAGE)
    size = _parse_int(params, "pageSize", 1, MAX_PAGE_SIZE)
    if page is None and size is None and default_size is None:
        return None
    return Paging(page or 1, size or default_size or DEFAULT_PAGE_SIZE)


def parse_sort(
    params: Params, accepted: Sequence[str], default: tuple[tuple[str, bool], ...]
) -> tuple[tuple[str, bool], ...]:
    """`sort=key` ascending, `sort=-key` descending; several keys comma-separated, the first one leads."""
    keys = params.many("sort")
    if keys is None:
        return default
    spec: list[tuple[str, bool]] = []
    for key in keys:
        descending = key.startswith("-")
        name = key.lstrip("+-").strip()
        if name not in accepted:
            options = ", ".join(accepted)
            raise QueryError("sort", key, f"one of {options}, with a - prefix for descending")
        if any(name == earlier for earlier, _ in spec):
            raise QueryError("sort", ",".join(keys), "each key at most once")
        spec.append((name, descending))
    return tuple(spec)


def parse_projection(params: Params) -> Projection:
    """`fields` (a subset of the task fields) and `fileList=full|summary|none`.

    Without `fields` every field is served. A `fields` list without fileList drops the file part unless
    `fileList` asks for it explicitly."""
    fields = parse_choices(params, "fields", TASK_FIELDS)
    mode = params.single("fileList")
    if mode is not None and mode not in FILE_LIST_MODES:
        raise QueryError("fileList", mode, "one of " + ", ".join(FILE_LIST_MODES))
    if fields is None:
        return Projection(BASE_FIELDS, mode or "full")
    base = tuple(name for name in BASE_FIELDS if name in fields)
    if mode is None:
        mode = "full" if "fileList" in fields else "none"
    return Projection(base, mode)


def parse_query(items: Iterable[tuple[str, str]], running_statuses: Sequence[str]) -> Query:
    """The running list's query from the query string's pairs; unknown parameters are ignored."""
    params = Params(items)
    started_after, started_before = parse_range(params, "startedAfter", "startedBefore")
    updated_after, updated_before = parse_range(params, "updatedAfter", "updatedBefore")
    client_ids = params.many("clientId")
    return Query(
        client_ids=None if client_ids is None else tuple(sorted(client_ids)),
        statuses=parse_choices(params, "status", running_statuses),
        started_after=started_after,
        started_before=started_before,
        updated_after=updated_after,
        updated_before=updated_before,
        stalled=parse_bool(params, "stalled"),
        sort=parse_sort(params, tuple(SORT_KEYS), DEFAULT_SORT),
        paging=parse_paging(params),
        projection=parse_projection(params),
    )


# -- applying ----------------------------------------------------------------------------------------------


def select(tasks: Sequence[TaskView], query: Query) -> list[TaskView]:
    """The tasks that match every filter, in the query's order (ties keep the snapshot's order)."""
    out: Sequence[TaskView] = tasks
    # one pass per given filter: each comprehension runs at C speed and the next one sees fewer tasks
    if query.client_ids is not None:
        clients = frozenset(query.client_ids)
        out = [t for t in out if t.client_id in clients]
    if query.statuses is not None:
        statuses = frozenset(query.statuses)
        out = [t for t in out if t.process in statuses]
    if query.stalled is not None:
        stalled = query.stalled
        out = [t for t in out if t.stalled is stalled]
    out = in_range(out, attrgetter("start_ms"), query.started_after, query.started_before)
    out = in_range(out, attrgetter("update_ms"), query.updated_after, query.updated_before)
    if query.sort != DEFAULT_SORT:
        # stable sorts from the last key to the first: the first key leads, the snapshot's order breaks ties
        for name, descending in reversed(query.sort):
            out = sorted(out, key=attrgetter(SORT_KEYS[name]), reverse=descending)
    return list(out)


_Item = TypeVar("_Item")


def in_range(
    items: Sequence[_Item], key: Callable[[_Item], int], after: int | None, before: int | None
) -> Sequence[_Item]:
    """The items whose `key` lies in the half-open range [after, before); a bound of None is open."""
    if after is not None:
        items = [item for item in items if key(item) >= after]
    if before is not None:
        items = [item for item in items if key(item) < before]
    return items


def paginate(items: list[TaskView], paging: Paging | None) -> Page:
    if paging is None:
        return Page(len(items), items, None)
    start = (paging.page - 1) * paging.page_size
    return Page(len(items), items[start : start + paging.page_size], paging)


def page_meta(total: int, paging: Paging | None) -> dict[str, int]:
    """`totalTasks`, and with paging `page`, `pageSize`, `totalPages` (0 when nothing matches)."""
    meta = {"totalTasks": total}
    if paging is not None:
        meta.update(page=paging.page, pageSize=paging.page_size, totalPages=math.ceil(total / paging.page_size))
    return meta


def render_list(meta: Mapping[str, object], items: Iterable[bytes], key: str = "tasks") -> bytes:
    """The success envelope of a list: `meta` fields, then `key` holding the already rendered JSON objects."""
    head = orjson.dumps({"code": 0, "message": "ok", "success": True, "data": meta})
    return b"".join((head[:-2], b',"%s":[' % key.encode(), b",".join(items), b"]}}"))


def render_page(page: Page, projection: Projection) -> bytes:
    return render_list(page_meta(page.total, page.paging), (render_task(t, projection) for t in page.tasks))


# -- one task's JSON under a projection --------------------------------------------------------------------


class _FileEntry(msgspec.Struct):
    status: str = ""
    operate: str = ""


_entries_decoder = msgspec.json.Decoder(list[_FileEntry])


def file_summary(view: TaskView) -> dict[str, object]:
    """Counts of a task's files per status and per operation, plus the total; known names always present."""
    entries = _entries_decoder.decode(view.file_list)
    by_status = Counter(entry.status for entry in entries)
    by_operate = Counter(entry.operate for entry in entries)
    return {
        "total": len(entries),
        "byStatus": _counts(by_status, FILE_STATUSES),
        "byOperate": _counts(by_operate, FILE_OPERATES),
    }


def _counts(counter: Counter[str], known: Sequence[str]) -> dict[str, int]:
    counts = {name: counter.get(name, 0) for name in known}
    counts.update((name, counter[name]) for name in sorted(counter) if name not in counts)
    return counts


def render_task(view: TaskView, projection: Projection) -> bytes:
    """A task's JSON under `projection`; the default one is the pre-rendered JSON itself, never re-encoded."""
    if projection.is_default:
        return view.json
    if projection.fields == BASE_FIELDS:
        # every field but a different file part: the pre-rendered head without its `,"fileList":`
        head = view.head[: -len(_FILE_LIST_KEY)]
        if projection.file_list == "none":
            return head + b"}"
        return b"".join((head, b',"fileSummary":', orjson.dumps(file_summary(view)), b"}"))
    task: dict[str, object] = {}
    for name in projection.fields:
        value = _field(view, name)
        if value is not None or name != "estimatedCompletionTime":  # omitted when unknown, as in the full task
            task[name] = value
    if projection.file_list == "full":
        task["fileList"] = orjson.Fragment(view.file_list)
    elif projection.file_list == "summary":
        task["fileSummary"] = file_summary(view)
    return orjson.dumps(task)


def _field(view: TaskView, name: str) -> object:
    if name == "taskId":
        return view.task_id
    if name == "clientId":
        return view.client_id
    if name in ("status", "process"):
        return view.process
    if name == "totalProgress":
        return view.total_progress
    if name == "startTime":
        return format_time(view.start_ms)
    if name == "lastUpdateTime":
        return format_time(view.update_ms)
    if name == "estimatedCompletionTime":
        return None if view.eta_ms is None else format_time(view.eta_ms)
    if name == "stalled":
        return view.stalled
    raise KeyError(name)  # pragma: no cover - fields are validated by parse_projection
