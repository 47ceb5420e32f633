"""The dashboard: its page and assets over HTTP, then the page itself in a real headless Chromium (Debian's
chromium driven through Debian's chromium-driver) against `serve` and a real redis-server fed like a producer."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.devtools.browser import chromium, missing
from service.devtools.embedded import RedisServerProcess
from service.devtools.simulator import SimTask, Simulator
from service.http.dashboard import ASSETS
from tests.conftest import start_serve, stop_serve

TOKEN = "dashboard-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API = "/codebase-embedder/api/v1/tasks"
WAIT = 15.0  # a hang detector for the browser's steps, not a timing requirement


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    base: str
    redis: redis.Redis
    log: Path


def _serve(redis_url: str, tmp: Path, settings_text: str) -> Served:
    process, base, log = start_serve(
        redis_url,
        tmp,
        "[running_tasks]\nrefresh_interval = 0.5\nproducer_key_ttl = 0\nstall_after = 3600\n"
        f'change_feed = "{os.environ.get("TEST_CHANGE_FEED", "auto")}"\n{settings_text}',
    )
    return Served(process, base, redis.Redis.from_url(redis_url), log)


def _stop(served: Served) -> None:
    stop_serve(served.process)
    served.redis.close()
    assert "Traceback" not in served.log.read_text(), served.log.read_text()


@pytest.fixture(scope="module")
def served(redis_server: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    served = _serve(redis_server.url, tmp_path_factory.mktemp("dashboard"), f'[auth]\ntokens = ["{TOKEN}"]\n')
    yield served
    _stop(served)


# ---- over HTTP ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/dashboard"])
def test_the_page_needs_no_token_and_forbids_inline_code(served: Served, path: str) -> None:
    response = httpx.get(served.base + path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in response.text and " style=" not in response.text  # nothing inline for CSP to block
    script = httpx.get(served.base + "/dashboard/dashboard.js").text
    for name in ASSETS:  # each asset is used: by the page, or by its script (the stream's worker)
        assert f"/dashboard/{name}" in response.text + script


def test_assets_are_cached_with_etags_and_compressed(served: Served) -> None:
    total = 0
    for path in ["/", *(f"/dashboard/{name}" for name in ASSETS)]:
        plain = httpx.get(served.base + path, headers={"Accept-Encoding": "identity"})
        assert plain.status_code == 200 and "content-encoding" not in plain.headers
        total += len(plain.content)
        etag = plain.headers["etag"]
        assert httpx.get(served.base + path, headers={"If-None-Match": etag}).status_code == 304
        zipped = httpx.get(served.base + path, headers={"Accept-Encoding": "gzip"})
        assert zipped.headers["content-encoding"] == "gzip"
        assert zipped.headers["etag"] != etag
        assert zipped.content == plain.content  # httpx undoes the gzip
        assert zipped.headers["cache-control"] == "no-cache"
    assert total <= 150 * 1024  # the budget for the whole page, uncompressed


def test_an_unknown_asset_is_404_and_data_calls_still_need_the_token(served: Served) -> None:
    assert httpx.get(served.base + "/dashboard/nothing.js").status_code == 401  # not a public path
    assert httpx.get(served.base + "/dashboard/nothing.js", headers=AUTH).status_code == 404
    assert httpx.get(served.base + API + "/running").status_code == 401
    assert httpx.get(served.base + API + "/running", headers=AUTH).status_code == 200


# ---- in Chromium --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    absent = missing()
    if absent:
        message = f"{', '.join(absent)} missing (Debian: apt-get install chromium chromium-driver; .ci/run does it)"
        if os.environ.get("REQUIRE_REAL_REDIS") or os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    driver = chromium()
    yield driver
    driver.quit()


def _until(what: Callable[[], Any], message: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = what()
        except Exception:  # an element replaced while read (a live page): look again
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {message}")
        time.sleep(0.05)


def _js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def _row_progress(driver: Any, task_id: str) -> str | None:
    value: str | None = _js(
        driver,
        "const tr = document.querySelector(`#rows tr[data-task-id='${arguments[0]}']`);"
        "return tr ? tr.querySelector('progress').value + '|' + tr.children[3].textContent : null;",
        task_id,
    )
    return value


def _shown_ids(driver: Any) -> list[str]:
    ids: list[str] = _js(driver, "return [...document.querySelectorAll('#rows tr')].map(tr => tr.dataset.taskId);")
    return ids


def _problems(driver: Any) -> list[dict[str, Any]]:
    """Console errors (a CSP violation is one), failed requests the page made."""
    entries: list[dict[str, Any]] = driver.get_log("browser")
    return [entry for entry in entries if entry["level"] == "SEVERE"]


class Producer:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.sim = Simulator(7, files=4, newer_producer_fraction=1.0)

    def new(self, client_id: str) -> SimTask:
        task = self.sim.new_task()
        task.client_id = client_id
        task.start_ms = int(time.time() * 1000)
        self.write(task)
        return task

    def write(self, task: SimTask) -> None:
        self.client.set(task.key(), task.value(int(time.time() * 1000)), ex=3600)


@pytest.fixture(scope="module")
def page(served: Served, browser: Any) -> Iterator[tuple[Any, Producer, list[SimTask]]]:
    producer = Producer(served.redis)
    tasks = [producer.new("client-a" if i % 2 else "client-b") for i in range(6)]
    browser.get(served.base + "/")
    # the token prompt: a wrong token is refused, the right one works and is kept for the session
    _until(lambda: browser.find_element("id", "token").is_displayed(), "the token prompt")
    browser.find_element("id", "token").send_keys("not-the-token-0123456789")
    browser.find_element("css selector", "#token-form button").click()
    _until(lambda: "refused" in browser.find_element("id", "token-error").text, "a refused token said so")
    browser.find_element("id", "token").send_keys(TOKEN)
    browser.find_element("css selector", "#token-form button").click()
    _until(lambda: len(_shown_ids(browser)) == len(tasks), "every running task shown")
    assert not browser.find_element("id", "token-form").is_displayed()
    assert _js(browser, "return sessionStorage.getItem('running-tasks-token');") == TOKEN
    # the refused token's requests are the only failures so far, and the only console errors
    assert all(" 401 " in entry["message"] for entry in _problems(browser)), _problems(browser)
    yield browser, producer, tasks


def test_the_page_shows_the_running_tasks_live(page: tuple[Any, Producer, list[SimTask]]) -> None:
    driver, producer, tasks = page
    assert sorted(_shown_ids(driver)) == sorted(task.task_id for task in tasks)
    assert driver.find_element("id", "badge").text == "live"
    assert driver.find_element("id", "total").text == str(len(tasks))
    task = tasks[0]
    reloads = _js(driver, "return performance.getEntriesByType('navigation').length;")
    task.progress = 57
    producer.write(task)
    _until(lambda: _row_progress(driver, task.task_id) == "57|57 %", "the progress bar moved")
    assert _js(driver, "return performance.getEntriesByType('navigation').length;") == reloads  # no reload
    assert _problems(driver) == []


def test_a_finished_task_leaves_the_table_for_the_finished_list(page: tuple[Any, Producer, list[SimTask]]) -> None:
    driver, producer, tasks = page
    task = tasks.pop()
    task.process = "completed"
    producer.write(task)
    _until(lambda: task.task_id not in _shown_ids(driver), "the finished task left the table")
    _until(
        lambda: driver.find_elements("css selector", f"#finished-rows tr[data-task-id='{task.task_id}']"),
        "the finished task listed under finished",
    )
    row = driver.find_element("css selector", f"#finished-rows tr[data-task-id='{task.task_id}']")
    assert "completed" in row.text
    # the chart of the last hour counts it in the last minute's bar
    _until(
        lambda: _js(driver, "return [...document.querySelectorAll('#chart rect')].at(-1).getAttribute('height') > 0"),
        "the chart's last bar",
    )
    assert _problems(driver) == []


def test_filters_search_and_sort(page: tuple[Any, Producer, list[SimTask]]) -> None:
    driver, _, tasks = page
    client_a = sorted(task.task_id for task in tasks if task.client_id == "client-a")
    driver.find_element("id", "f-client").send_keys("client-a")
    _until(lambda: sorted(_shown_ids(driver)) == client_a, "only client-a's tasks")
    driver.find_element("id", "f-client").clear()
    _js(driver, "document.getElementById('f-client').dispatchEvent(new Event('input', {bubbles: true}));")
    _until(lambda: len(_shown_ids(driver)) == len(tasks), "every task again")
    search = driver.find_element("id", "f-search")
    search.send_keys(tasks[1].task_id[:12])
    _until(lambda: _shown_ids(driver) == [tasks[1].task_id], "the task searched for")
    search.clear()
    _js(driver, "document.getElementById('f-search').dispatchEvent(new Event('input', {bubbles: true}));")
    _until(lambda: len(_shown_ids(driver)) == len(tasks), "every task again")
    driver.find_element("css selector", "th button[data-sort='taskId']").click()
    _until(lambda: _shown_ids(driver) == sorted(task.task_id for task in tasks), "sorted by task id")
    driver.find_element("css selector", "th button[data-sort='taskId']").click()
    _until(lambda: _shown_ids(driver) == sorted((task.task_id for task in tasks), reverse=True), "and reversed")
    assert _problems(driver) == []


def test_the_file_list_drawer_opens_from_the_keyboard(page: tuple[Any, Producer, list[SimTask]]) -> None:
    from selenium.webdriver.common.keys import Keys

    driver, _, tasks = page
    task = tasks[0]

    def open_by_keyboard() -> bool:
        # a row is made again when its task changes: find it again until Enter reaches one
        driver.find_element("css selector", f"#rows tr[data-task-id='{task.task_id}']").send_keys(Keys.ENTER)
        return bool(driver.find_element("id", "drawer").is_displayed())

    _until(open_by_keyboard, "the drawer opened")
    paths = _until(
        lambda: [
            tr.find_element("css selector", "td").text for tr in driver.find_elements("css selector", "#files tr")
        ],
        "the file list",
    )
    assert paths == [entry["path"] for entry in task.files]
    driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    _until(lambda: not driver.find_element("id", "drawer").is_displayed(), "the drawer closed")
    assert _problems(driver) == []


def test_a_change_set_of_thousands_is_applied_whole(page: tuple[Any, Producer, list[SimTask]]) -> None:
    # far more tasks at once than the worker posts in one part (stream.js: PART): applied in parts, all of them
    driver, producer, tasks = page
    bulk = []
    for _ in range(2000):
        task = producer.sim.new_task()
        task.client_id = "client-bulk"
        task.start_ms = int(time.time() * 1000) - 60_000  # older than the page's tasks: they stay on page 1
        bulk.append(task)
    now = int(time.time() * 1000)
    with producer.client.pipeline(transaction=False) as pipe:
        for task in bulk:
            pipe.set(task.key(), task.value(now), ex=3600)
        pipe.execute()
    _until(lambda: driver.find_element("id", "total").text == f"{len(tasks) + len(bulk):,}", "every new task held")
    search = driver.find_element("id", "f-search")
    search.send_keys(bulk[-1].task_id)
    _until(lambda: _shown_ids(driver) == [bulk[-1].task_id], "the last of them held")
    search.clear()
    _js(driver, "document.getElementById('f-search').dispatchEvent(new Event('input', {bubbles: true}));")
    with producer.client.pipeline(transaction=False) as pipe:
        for task in bulk:
            pipe.delete(task.key())
        pipe.execute()
    _until(lambda: driver.find_element("id", "total").text == str(len(tasks)), "every one of them gone")
    assert sorted(_shown_ids(driver)) == sorted(task.task_id for task in tasks)
    assert _problems(driver) == []


def test_redis_stopped_then_back(
    page: tuple[Any, Producer, list[SimTask]], redis_server: RedisServerProcess, served: Served
) -> None:
    driver, producer, tasks = page
    shown = sorted(_shown_ids(driver))
    redis_server.stop()
    try:
        _until(lambda: driver.find_element("id", "badge").text == "Redis unavailable", "the badge says so", 60)
        assert sorted(_shown_ids(driver)) == shown  # the last data stays
    finally:
        redis_server.start()
    _until(lambda: driver.find_element("id", "badge").text == "live", "live again", 60)
    task = tasks[0]
    task.progress = 88
    producer.write(task)
    _until(lambda: _row_progress(driver, task.task_id) == "88|88 %", "writes shown again", 60)


def test_without_a_stream_the_page_polls_with_since(
    page: tuple[Any, Producer, list[SimTask]], redis_server: RedisServerProcess, tmp_path: Path
) -> None:
    driver, producer, tasks = page
    redis_server.start()
    for task in tasks:  # a test before may have restarted Redis, which keeps nothing
        producer.write(task)
    # no stream may be opened (503 + Retry-After): the page polls the running list instead
    served = _serve(redis_server.url, tmp_path, "[events]\nmax_streams = 0\n")
    try:
        driver.get(served.base + "/dashboard")
        _until(lambda: driver.find_element("id", "badge").text == "polling", "the badge says polling")
        expected = sorted(task.task_id for task in tasks)
        _until(lambda: sorted(_shown_ids(driver)) == expected, "every running task shown")
        task = tasks[0]
        task.progress = 42
        producer.write(task)
        _until(lambda: _row_progress(driver, task.task_id) == "42|42 %", "a write shown by polling")
        failed = [entry for entry in _problems(driver) if " 503 " not in entry["message"]]
        assert failed == []  # the refused streams, and nothing else
    finally:
        _stop(served)
