"""The running list's query: parsing and validation, filters, sort, pages, projections; no HTTP."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest

from service.domain.times import format_time
from service.domain.tracker import TaskView
from service.query.params import Paging, QueryError
from service.query.project import BASE_FIELDS, Projection, file_summary, render_task
from service.query.running import Query, paginate, parse_query, render_page, select
from service.snapshot.render import task_head, task_json

T0 = 1_795_000_000_000
STATUSES = ("pending", "processing", "running")


def params(query: str) -> list[tuple[str, str]]:
    return [tuple(part.split("=", 1)) for part in query.split("&") if part]  # type: ignore[misc]


def parse(query: str) -> Query:
    return parse_query(params(query), STATUSES)


def entry(path: str, status: str = "pending", operate: str = "add") -> dict[str, str]:
    return {"path": path, "status": status, "operate": operate}


def make_view(
    task_id: str,
    client: str = "",
    process: str = "processing",
    progress: int = 0,
    start: int = T0,
    update: int = T0,
    eta: int | None = None,
    stalled: bool = False,
    files: list[dict[str, str]] | None = None,
) -> TaskView:
    files = [entry("a.go")] if files is None else files
    file_list = orjson.dumps(files)
    return TaskView(task_id, client, process, progress, start, update, eta, len(files), file_list, stalled, None)


def json_of(view: TaskView) -> bytes:
    return task_json(view, task_head(view))


def sample() -> list[TaskView]:
    """Five tasks in the snapshot's order: newest start first, ties by task id."""
    return [
        make_view("e", "c1", "pending", 0, start=T0 + 4000, update=T0 + 4000),
        make_view("b", "c2", "processing", 70, start=T0 + 3000, update=T0 + 9000, eta=T0 + 20_000),
        make_view("d", "c2", "processing", 70, start=T0 + 3000, update=T0 + 3000, stalled=True),
        make_view("a", "", "processing", 10, start=T0 + 1000, update=T0 + 8000),
        make_view("c", "c1", "running", 95, start=T0, update=T0 + 1000, stalled=True),
    ]


def ids(query: str, tasks: list[TaskView] | None = None) -> list[str]:
    return [t.task_id for t in select(sample() if tasks is None else tasks, parse(query))]


# -- parsing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "",
        "unknown=1&other=x",  # unknown parameters are ignored
        "clientId=&status=&page=",  # so are empty ones
        "sort=-startTime",
        "fileList=full",
        "fields=" + ",".join(BASE_FIELDS) + ",fileList",
        "fields=fileList,taskId,clientId,status,process,totalProgress,startTime,lastUpdateTime,"
        "estimatedCompletionTime,stalled&fileList=full",
    ],
)
def test_queries_that_ask_for_the_unfiltered_read(query: str) -> None:
    assert parse(query).is_default


def test_client_ids_repeatable_or_comma_separated_normalised() -> None:
    assert parse("clientId=c2,c1&clientId=c1&clientId= c3 ").client_ids == ("c1", "c2", "c3")
    assert parse("clientId=c2,c1") == parse("clientId=c1&clientId=c2")  # one cache entry for both


def test_statuses_are_the_running_ones() -> None:
    assert parse("status=processing,pending").statuses == ("pending", "processing")
    assert parse_query(params("status=queued"), ("queued",)).statuses == ("queued",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1795000000000", T0),
        ("2026-11-18T11:06:40Z", T0),
        ("2026-11-18T11:06:40.000Z", T0),
        ("2026-11-18T19:06:40+08:00", T0),
        ("2026-11-18T19:06:40 08:00", T0),  # a `+` sent unencoded arrives as a space
        ("2026-11-18T06:06:40-05:00", T0),
        ("2026-11-18T11:06:40", T0),  # no offset: UTC
        ("2026-11-18", T0 - (11 * 3600 + 6 * 60 + 40) * 1000),
    ],
)
def test_times_rfc3339_or_epoch_ms(text: str, expected: int) -> None:
    assert parse(f"startedAfter={text}").started_after == expected
    assert parse(f"updatedBefore={text}").updated_before == expected


def test_bounds_of_numbers() -> None:
    assert parse("startedAfter=" + "9" * 15).started_after == 10**15 - 1
    assert parse("startedAfter=0").started_after == 0
    assert parse("page=000000000000007").paging == Paging(7, 100)  # leading zeros do not count as digits
    assert parse("page=1000000000").paging == Paging(10**9, 100)
    assert parse("clientId=" + ",".join(["c1"] * 999) + ",").client_ids == ("c1",)  # 1000 values


def test_stalled_and_sort_and_paging() -> None:
    assert parse("stalled=true").stalled is True
    assert parse("stalled=FALSE").stalled is False
    assert parse("sort=totalProgress").sort == (("totalProgress", False),)
    assert parse("sort=-lastUpdateTime,+taskId").sort == (("lastUpdateTime", True), ("taskId", False))
    assert parse("sort= taskId").sort == (("taskId", False),)  # `+taskId` unencoded: the + became a space
    assert parse("page=3").paging == Paging(3, 100)
    assert parse("pageSize=7").paging == Paging(1, 7)
    assert parse("page=2&pageSize=1000").paging == Paging(2, 1000)
    assert parse("").paging is None


def test_projection() -> None:
    assert parse("fileList=none").projection == Projection(BASE_FIELDS, "none")
    assert parse("fileList=summary").projection == Projection(BASE_FIELDS, "summary")
    assert parse("fields=totalProgress,taskId").projection == Projection(("taskId", "totalProgress"), "none")
    assert parse("fields=taskId,fileList").projection == Projection(("taskId",), "full")
    assert parse("fields=taskId&fileList=summary").projection == Projection(("taskId",), "summary")
    assert parse("fields=taskId,fileList&fileList=none").projection == Projection(("taskId",), "none")


@pytest.mark.parametrize(
    ("query", "parameter", "accepted"),
    [
        ("status=completed", "status", "one or more of pending, processing, running"),
        ("status=processing,Pending", "status", "one or more of pending, processing, running"),
        ("startedAfter=yesterday", "startedAfter", "RFC 3339"),
        ("startedBefore=2026-13-01T00:00:00Z", "startedBefore", "epoch milliseconds"),
        ("updatedAfter=-5", "updatedAfter", "RFC 3339"),
        ("updatedBefore=12:00", "updatedBefore", "RFC 3339"),
        ("startedAfter=2000&startedBefore=1000", "startedBefore", "later than startedAfter"),
        ("updatedAfter=1000&updatedBefore=1000", "updatedBefore", "later than updatedAfter"),
        ("stalled=yes", "stalled", "true or false"),
        ("sort=progress", "sort", "one of startTime, lastUpdateTime, totalProgress, taskId"),
        ("sort=taskId,-taskId", "sort", "each key at most once"),
        ("page=0", "page", "an integer from 1"),
        ("page=abc", "page", "an integer from 1"),
        ("page=1.5", "page", "an integer from 1"),
        ("pageSize=0", "pageSize", "an integer from 1 to 1000"),
        ("pageSize=1001", "pageSize", "an integer from 1 to 1000"),
        ("pageSize=-1", "pageSize", "an integer from 1 to 1000"),
        ("pageSize=10&pageSize=20", "pageSize", "a single value"),
        ("stalled=true&stalled=false", "stalled", "a single value"),
        ("fields=taskId,size", "fields", "one or more of taskId, clientId"),
        ("fileList=partial", "fileList", "one of full, summary, none"),
        ("clientId=" + ",".join(str(i) for i in range(1001)), "clientId", "at most 1000 values"),
        # every value sent counts, repeats and empty ones too: what OpenAPI's maxItems says
        ("clientId=" + ",".join(["c1"] * 1001), "clientId", "at most 1000 values"),
        ("status=" + "," * 1000, "status", "at most 1000 values"),
        # digits str.isdigit() admits but int() does not read (once a 500), or reads in another script
        ("page=\u00b2", "page", "an integer from 1"),
        ("pageSize=\u0663", "pageSize", "an integer from 1 to 1000"),
        ("startedAfter=\u00b2", "startedAfter", "epoch milliseconds"),
        # more digits than int() converts (4300; once a 500), and epoch ms past EPOCH_MS_MAX_DIGITS
        ("page=" + "9" * 5000, "page", "an integer from 1"),
        ("updatedBefore=" + "9" * 5000, "updatedBefore", "epoch milliseconds (at most 15 digits)"),
        ("startedAfter=1" + "0" * 15, "startedAfter", "epoch milliseconds (at most 15 digits)"),
    ],
)
def test_bad_values_name_the_parameter_and_what_is_accepted(query: str, parameter: str, accepted: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse(query)
    error = caught.value
    assert error.parameter == parameter
    assert accepted in error.accepted
    assert str(error).startswith(f"{parameter}: ")


# -- filters, sort, pages -----------------------------------------------------------------------------------


def test_filters() -> None:
    assert ids("") == ["e", "b", "d", "a", "c"]
    assert ids("clientId=c1") == ["e", "c"]
    assert ids("clientId=c1,c2") == ["e", "b", "d", "c"]
    assert ids("clientId=nobody") == []
    assert ids("status=processing") == ["b", "d", "a"]
    assert ids("status=pending,running") == ["e", "c"]
    assert ids("stalled=true") == ["d", "c"]
    assert ids("stalled=false") == ["e", "b", "a"]
    assert ids(f"startedAfter={T0 + 3000}") == ["e", "b", "d"]  # inclusive
    assert ids(f"startedBefore={T0 + 3000}") == ["a", "c"]  # exclusive
    assert ids(f"startedAfter={T0 + 1000}&startedBefore={T0 + 4000}") == ["b", "d", "a"]
    assert ids(f"updatedAfter={T0 + 8000}") == ["b", "a"]
    assert ids(f"updatedBefore={T0 + 3001}") == ["d", "c"]
    assert ids(f"clientId=c2&stalled=false&updatedAfter={format_time(T0 + 5000)}") == ["b"]


def test_sorts_are_stable_over_the_snapshot_order() -> None:
    assert ids("sort=startTime") == ["c", "a", "b", "d", "e"]  # b and d start together: snapshot order kept
    assert ids("sort=totalProgress") == ["e", "a", "b", "d", "c"]
    assert ids("sort=-totalProgress") == ["c", "b", "d", "a", "e"]
    assert ids("sort=lastUpdateTime") == ["c", "d", "e", "a", "b"]
    assert ids("sort=-lastUpdateTime") == ["b", "a", "e", "d", "c"]
    assert ids("sort=taskId") == ["a", "b", "c", "d", "e"]
    assert ids("sort=-taskId") == ["e", "d", "c", "b", "a"]
    assert ids("sort=-totalProgress,-taskId") == ["c", "d", "b", "a", "e"]
    assert ids("status=processing&sort=lastUpdateTime") == ["d", "a", "b"]


def test_pages() -> None:
    matches = select(sample(), parse(""))
    pages = [paginate(matches, Paging(n, 2)) for n in (1, 2, 3, 4)]
    assert [[t.task_id for t in p.tasks] for p in pages] == [["e", "b"], ["d", "a"], ["c"], []]
    assert {p.total for p in pages} == {5}
    empty = orjson.loads(render_page(paginate([], Paging(1, 10)), Projection(), task_head))
    assert empty["data"] == {"totalTasks": 0, "page": 1, "pageSize": 10, "totalPages": 0, "tasks": []}


def test_rendered_page_reuses_each_tasks_json() -> None:
    tasks = sample()
    body = render_page(paginate(tasks, Paging(2, 2)), Projection(), task_head)
    assert body == (
        b'{"code":0,"message":"ok","success":true,"data":{"totalTasks":5,"page":2,"pageSize":2,"totalPages":3,'
        b'"tasks":[' + json_of(tasks[2]) + b"," + json_of(tasks[3]) + b"]}}"
    )
    unpaged = orjson.loads(render_page(paginate(tasks, None), Projection(), task_head))
    assert list(unpaged["data"]) == ["totalTasks", "tasks"]


# -- projections --------------------------------------------------------------------------------------------


FILES = [
    entry("src/a.go", "completed", "add"),
    entry("src/b.go", "processing", "modify"),
    entry("old.go", "processing", "delete"),
    entry("logo.png", "unsupported", "add"),
    entry('odd ,"fileList":[] name.go', "pending", "rename"),  # the marker's text inside a path is escaped
    entry("x.go", "queued", "copy"),  # names outside the vocabulary are counted too
]


def as_obj(view: TaskView, projection: Projection) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(render_task(view, task_head(view), projection))
    return loaded


def test_default_projection_is_the_pre_rendered_json_itself() -> None:
    view = make_view("a", files=FILES)
    # the head and the stored list joined, nothing encoded again
    assert render_task(view, task_head(view), Projection()) == task_head(view) + view.file_list + b"}"
    assert orjson.loads(view.file_list) == FILES


def test_no_file_list_keeps_every_other_field_in_order() -> None:
    view = make_view("a", "c1", eta=T0 + 5000, files=FILES)
    full = orjson.loads(json_of(view))
    lean = as_obj(view, Projection(BASE_FIELDS, "none"))
    assert list(lean) == [k for k in full if k != "fileList"]
    assert lean == {k: v for k, v in full.items() if k != "fileList"}


def test_file_summary_counts_statuses_operations_and_total() -> None:
    view = make_view("a", files=FILES)
    summary = {
        "total": 6,
        "byStatus": {"pending": 1, "processing": 2, "completed": 1, "unsupported": 1, "failed": 0, "queued": 1},
        "byOperate": {"add": 2, "modify": 1, "delete": 1, "rename": 1, "copy": 1},
    }
    assert msgspec.to_builtins(file_summary(view)) == summary
    rendered = as_obj(view, Projection(BASE_FIELDS, "summary"))
    assert rendered["fileSummary"] == summary
    assert "fileList" not in rendered
    assert list(rendered)[-1] == "fileSummary"
    empty = make_view("e", files=[])
    assert file_summary(empty).total == 0


def test_a_subset_of_fields() -> None:
    view = make_view("a", "c1", "processing", 40, start=T0, update=T0 + 5, eta=T0 + 9, stalled=True, files=FILES)
    assert as_obj(view, Projection(("taskId", "totalProgress"), "none")) == {"taskId": "a", "totalProgress": 40}
    every = as_obj(view, Projection(BASE_FIELDS[:-1] + ("stalled",), "full"))
    assert every == orjson.loads(json_of(view))  # field by field, the same object as the pre-rendered one
    assert as_obj(view, Projection(("status", "stalled"), "summary"))["fileSummary"]["total"] == 6
    no_eta = make_view("b")
    assert as_obj(no_eta, Projection(("taskId", "estimatedCompletionTime"), "none")) == {"taskId": "b"}
    times = as_obj(view, Projection(("startTime", "lastUpdateTime", "estimatedCompletionTime"), "none"))
    assert times == {
        "startTime": format_time(T0),
        "lastUpdateTime": format_time(T0 + 5),
        "estimatedCompletionTime": format_time(T0 + 9),
    }
