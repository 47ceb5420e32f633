// The running tasks, live: the event stream of the running list (fetch streaming, so that a token travels in a
// header), ETag polling with since= when a stream cannot be held. No framework, no build step.
const API = "/codebase-embedder/api/v1/tasks";
const TOKEN_KEY = "running-tasks-token";
const PAGE_SIZE = 100;
const POLL_MS = 2000;

const $ = (id) => document.getElementById(id);
const state = {
  tasks: new Map(), // taskId -> task, as the stream projects it (fileList=summary)
  order: [], // the tasks, sorted by `sort`; kept in order event by event (binary search), never re-sorted whole
  sort: { key: "startTime", dir: -1 },
  page: 0,
  search: "",
  generation: null,
  view: "", // the filters the tasks held were fetched with
  connection: "connecting",
  service: null, // what cache-stats says: null, "stale" or "redis-unavailable"
  ageAt: null, // [snapshot age in s, performance.now() when it was read]
  abort: null,
  dirty: false,
};
let token = sessionStorage.getItem(TOKEN_KEY);

class Unauthorized extends Error {}

function authHeaders(extra = {}) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function api(path, extra = {}) {
  const response = await fetch(API + path, { headers: authHeaders(extra), cache: "no-store" });
  if (response.status === 401) {
    askToken(token ? "That token was refused." : "");
    throw new Unauthorized();
  }
  return response;
}

// ---- the token --------------------------------------------------------------------------------------------------

function askToken(message) {
  $("token-form").hidden = false;
  $("token-error").textContent = message;
  $("token").focus();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  $("token-form").hidden = true;
  restart();
  refreshSide();
});

// ---- filters, in the stream's query string; the search is the page's own ----------------------------------------

function viewParams() {
  const params = new URLSearchParams({ fileList: "summary" });
  const client = $("f-client").value.trim();
  if (client) params.set("clientId", client);
  if ($("f-status").value) params.set("status", $("f-status").value);
  if ($("f-stalled").checked) params.set("stalled", "true");
  return params;
}

let filterTimer = 0;
$("filters").addEventListener("input", (event) => {
  if (event.target.id === "f-search") {
    state.search = event.target.value.trim();
    state.page = 0;
    schedule();
    return;
  }
  clearTimeout(filterTimer);
  filterTimer = setTimeout(restart, 300); // typing a client id: one new stream, not one per key
});
$("filters").addEventListener("submit", (event) => event.preventDefault());

// ---- the tasks held, in order -----------------------------------------------------------------------------------

const KEYS = {
  taskId: (t) => t.taskId,
  clientId: (t) => t.clientId || "",
  status: (t) => t.status || "",
  totalProgress: (t) => t.totalProgress ?? -1,
  startTime: (t) => t.startTime || "",
  lastUpdateTime: (t) => t.lastUpdateTime || "",
  estimatedCompletionTime: (t) => t.estimatedCompletionTime || "",
  files: (t) => (t.fileSummary ? t.fileSummary.total : -1),
};

function compare(a, b) {
  const key = KEYS[state.sort.key];
  const x = key(a);
  const y = key(b);
  if (x < y) return -state.sort.dir;
  if (x > y) return state.sort.dir;
  return a.taskId < b.taskId ? -1 : a.taskId > b.taskId ? 1 : 0;
}

function place(task) {
  let low = 0;
  let high = state.order.length;
  while (low < high) {
    const mid = (low + high) >> 1;
    if (compare(state.order[mid], task) < 0) low = mid + 1;
    else high = mid;
  }
  return low;
}

function remove(taskId) {
  const old = state.tasks.get(taskId);
  if (!old) return;
  const at = place(old);
  if (state.order[at] === old) state.order.splice(at, 1);
  state.tasks.delete(taskId);
}

function upsert(task) {
  remove(task.taskId);
  state.tasks.set(task.taskId, task);
  state.order.splice(place(task), 0, task);
}

function replaceAll(tasks) {
  state.tasks = new Map(tasks.map((task) => [task.taskId, task]));
  state.order = [...state.tasks.values()].sort(compare);
}

// What arrives is applied in order, in slices of a few milliseconds: a change set of thousands of tasks (many
// turning stalled at once, a reconciliation) never holds the page for longer than a frame.
const SLICE_MS = 8;
// [{generation, tasks}, -1]: replace everything; [a change set, the next upsert's index, its removals done]
const inbox = [];
let draining = false;

function replaceLater(tasks, generation) {
  inbox.push([{ generation, tasks }, -1]);
  drainSoon();
}

function applyChanges(changes) {
  inbox.push([changes, 0, false]);
  drainSoon();
}

function drainSoon() {
  if (!draining) {
    draining = true;
    setTimeout(drain, 0);
  }
}

function drain() {
  const until = performance.now() + SLICE_MS;
  let finished = false;
  while (inbox.length && performance.now() < until) {
    const item = inbox[0];
    const [data, next] = item;
    if (next < 0) {
      replaceAll(data.tasks);
    } else {
      if (!item[2]) {
        for (const gone of data.removed) {
          remove(gone.taskId);
          finished ||= gone.outcome !== "filtered-out";
        }
        item[2] = true;
      }
      let index = next;
      // the clock every 8 upserts (it costs far less than one): a slice overruns by a few upserts at most
      while (index < data.upserted.length && (index % 8 !== 7 || performance.now() < until)) {
        upsert(data.upserted[index]);
        index += 1;
      }
      if (index < data.upserted.length) {
        item[1] = index; // the rest of the upserts in the next slice
        break;
      }
    }
    if (data.last !== false) state.generation = data.generation; // a set in parts: complete with its last
    inbox.shift();
  }
  if (finished) refreshFinishedSoon();
  schedule();
  if (inbox.length) setTimeout(drain, 0);
  else draining = false;
}

// ---- the event stream, read by a worker (stream.js): the page's thread only applies what it posts ----------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const streamWorker = new Worker("/dashboard/stream.js");
let streamSerial = 0; // the stream followed now; what the worker posts for an earlier one is dropped
let streamEnd = null; // resolves the stream's promise: {kind: "refused" | "ended" | "aborted", …}
let incoming = []; // the parts of a snapshot being received

function restart() {
  if (state.abort) state.abort.abort();
}

streamWorker.onmessage = ({ data }) => {
  if (data.serial !== streamSerial) return;
  if (data.kind === "open") {
    if (data.view !== state.view) {
      state.view = data.view;
      state.generation = null;
    }
    setConnection("live");
  } else if (data.kind === "snapshot") {
    if (data.first) incoming = [];
    incoming.push(...data.tasks);
    if (data.last) {
      replaceLater(incoming, data.generation);
      incoming = [];
    }
  } else if (data.kind === "changes") {
    applyChanges(data);
  } else {
    streamEnd(data);
  }
};

function stream(view, headers, signal) {
  streamSerial += 1;
  const serial = streamSerial;
  return new Promise((resolve) => {
    streamEnd = resolve;
    signal.addEventListener("abort", () => {
      if (serial !== streamSerial) return;
      streamSerial += 1;
      streamWorker.postMessage({ type: "close" });
      resolve({ kind: "aborted" });
    });
    streamWorker.postMessage({ type: "open", serial, view, url: `${API}/running/events?${view}`, headers });
  });
}

async function follow() {
  let retryMs = 1500;
  for (;;) {
    const controller = new AbortController();
    state.abort = controller;
    const view = viewParams().toString();
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (state.generation !== null && view === state.view) headers["Last-Event-ID"] = String(state.generation);
    const end = await stream(view, headers, controller.signal);
    if (end.kind === "aborted") continue; // the filters or the token changed: at once
    if (end.kind === "refused" && end.status === 401) {
      askToken(token ? "That token was refused." : "");
      await new Promise((resolve) => controller.signal.addEventListener("abort", resolve));
      continue;
    }
    if (end.kind === "refused") {
      // no stream to be had (too many streams, a proxy that buffers): poll meanwhile
      setConnection("polling");
      await poll(controller.signal, performance.now() + 1000 * (Number(end.retryAfter) || 30));
      continue;
    }
    if (end.retryMs) retryMs = end.retryMs;
    setConnection("reconnecting");
    await sleep(retryMs);
  }
}

// ---- polling with since=, while no stream can be held ------------------------------------------------------------

async function poll(signal, until) {
  let etag = null;
  while (!signal.aborted && performance.now() < until) {
    const params = viewParams();
    const view = params.toString();
    if (state.generation !== null && view === state.view) params.set("since", String(state.generation));
    try {
      const response = await api(`/running?${params}`, etag ? { "If-None-Match": etag } : {});
      if (response.status === 200) {
        etag = response.headers.get("etag");
        const data = (await response.json()).data;
        if (params.has("since")) {
          if (data.reset) replaceLater(data.upserted, data.generation);
          else applyChanges(data);
        } else {
          state.view = view;
          replaceLater(data.tasks, Number(response.headers.get("x-snapshot-generation")));
        }
      }
    } catch (error) {
      if (error instanceof Unauthorized) return;
    }
    await sleep(POLL_MS);
  }
}

// ---- what the service says of itself ----------------------------------------------------------------------------

function setConnection(connection) {
  state.connection = connection;
  showBadge();
}

function showBadge() {
  const badge = $("badge");
  const shown = state.service && state.connection !== "reconnecting" ? state.service : state.connection;
  const words = {
    live: "live",
    connecting: "connecting",
    reconnecting: "reconnecting",
    polling: "polling",
    stale: "snapshot stale",
    "redis-unavailable": "Redis unavailable",
  };
  if (badge.dataset.state !== shown) {
    badge.dataset.state = shown;
    badge.textContent = words[shown] || shown;
  }
}

async function refreshHealth() {
  try {
    const response = await api("/cache-stats");
    if (!response.ok) return;
    const stats = (await response.json()).data;
    const snapshot = stats.snapshot;
    const failed = stats.lastRefresh && stats.lastRefresh.error;
    state.service = failed ? "redis-unavailable" : snapshot && snapshot.stale ? "stale" : null;
    if (snapshot) state.ageAt = [snapshot.ageSeconds, performance.now()];
    showBadge();
  } catch {
    state.service = null;
  }
}

// ---- rendering: only the visible page, only the rows that changed ---------------------------------------------------

function schedule() {
  if (state.dirty) return;
  state.dirty = true;
  requestAnimationFrame(render);
}

const rowsById = new Map(); // taskId -> [tr, the task it shows]

function cell(tr, text) {
  const td = document.createElement("td");
  td.textContent = text;
  tr.append(td);
  return td;
}

function ago(time) {
  if (!time) return "–";
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(time)) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  return `${Math.floor(seconds / 3600)} h ago`;
}

function clock(time) {
  return time ? new Date(time).toLocaleTimeString() : "–";
}

function fileSummary(task) {
  const summary = task.fileSummary;
  if (!summary) return "–";
  const parts = Object.entries(summary.byStatus)
    .filter(([, count]) => count > 0)
    .map(([status, count]) => `${count} ${status}`);
  return `${summary.total}${parts.length ? ` (${parts.join(", ")})` : ""}`;
}

function makeRow(task) {
  const tr = document.createElement("tr");
  tr.tabIndex = 0;
  tr.dataset.taskId = task.taskId;
  cell(tr, task.taskId);
  cell(tr, task.clientId || "–");
  const status = cell(tr, task.status);
  if (task.stalled) {
    const badge = document.createElement("span");
    badge.className = "stalled";
    badge.textContent = "stalled";
    status.append(badge);
  }
  const progress = document.createElement("td");
  const wrap = document.createElement("div");
  wrap.className = "progress";
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = task.totalProgress;
  bar.setAttribute("aria-label", `${task.taskId} progress`);
  const label = document.createElement("span");
  label.textContent = `${task.totalProgress} %`;
  wrap.append(bar, label);
  progress.append(wrap);
  tr.append(progress);
  cell(tr, clock(task.startTime)).title = task.startTime;
  cell(tr, ago(task.lastUpdateTime)).title = task.lastUpdateTime;
  cell(tr, task.estimatedCompletionTime ? clock(task.estimatedCompletionTime) : "–");
  cell(tr, fileSummary(task));
  return tr;
}

function visible() {
  if (!state.search) return state.order;
  const needle = state.search.toLowerCase();
  return state.order.filter((task) => task.taskId.toLowerCase().includes(needle));
}

function render() {
  state.dirty = false;
  const tasks = visible();
  const pages = Math.max(1, Math.ceil(tasks.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  const first = state.page * PAGE_SIZE;
  const shown = tasks.slice(first, first + PAGE_SIZE);
  const body = $("rows");
  const keep = new Set();
  let previous = null;
  for (const task of shown) {
    let held = rowsById.get(task.taskId);
    if (!held || held[1] !== task) {
      const tr = makeRow(task);
      if (held) held[0].replaceWith(tr);
      held = [tr, task];
      rowsById.set(task.taskId, held);
    }
    keep.add(task.taskId);
    const tr = held[0];
    const expected = previous ? previous.nextSibling : body.firstChild;
    if (expected !== tr) body.insertBefore(tr, expected);
    previous = tr;
  }
  for (const [taskId, [tr]] of rowsById) {
    if (!keep.has(taskId)) {
      tr.remove();
      rowsById.delete(taskId);
    }
  }
  $("total").textContent = state.tasks.size.toLocaleString();
  $("range").textContent = tasks.length
    ? `${(first + 1).toLocaleString()}–${(first + shown.length).toLocaleString()} of ${tasks.length.toLocaleString()}`
    : "no running tasks";
  $("prev").disabled = state.page === 0;
  $("next").disabled = state.page >= pages - 1;
}

$("prev").addEventListener("click", () => {
  state.page = Math.max(0, state.page - 1);
  schedule();
});
$("next").addEventListener("click", () => {
  state.page += 1;
  schedule();
});

document.querySelectorAll("th button[data-sort]").forEach((button) => {
  button.addEventListener("click", () => {
    const key = button.dataset.sort;
    state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : key === "taskId" || key === "clientId" ? 1 : -1 };
    document.querySelectorAll("th button[data-sort]").forEach((other) => other.removeAttribute("aria-sort"));
    button.setAttribute("aria-sort", state.sort.dir > 0 ? "ascending" : "descending");
    state.order.sort(compare);
    state.page = 0;
    schedule();
  });
});

// ---- one task's files, on demand --------------------------------------------------------------------------------

let opener = null;

async function openDrawer(taskId, from) {
  opener = from;
  const drawer = $("drawer");
  $("drawer-title").textContent = taskId;
  const files = $("files");
  files.replaceChildren();
  drawer.hidden = false;
  drawer.focus();
  try {
    const response = await api(`/running/${encodeURIComponent(taskId)}`);
    if (!response.ok) {
      const tr = document.createElement("tr");
      cell(tr, response.status === 404 ? "no longer running" : `error ${response.status}`);
      files.append(tr);
      return;
    }
    const task = (await response.json()).data;
    for (const file of task.fileList || []) {
      const tr = document.createElement("tr");
      cell(tr, file.path);
      cell(tr, file.status);
      cell(tr, file.operate || "–");
      files.append(tr);
    }
  } catch {
    /* the token prompt says why */
  }
}

function closeDrawer() {
  $("drawer").hidden = true;
  if (opener && opener.isConnected) opener.focus();
}

$("rows").addEventListener("click", (event) => {
  const tr = event.target.closest("tr");
  if (tr) openDrawer(tr.dataset.taskId, tr);
});
$("rows").addEventListener("keydown", (event) => {
  const tr = event.target.closest("tr");
  if (!tr) return;
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    openDrawer(tr.dataset.taskId, tr);
  } else if (event.key === "ArrowDown" && tr.nextElementSibling) {
    event.preventDefault();
    tr.nextElementSibling.focus();
  } else if (event.key === "ArrowUp" && tr.previousElementSibling) {
    event.preventDefault();
    tr.previousElementSibling.focus();
  }
});
$("drawer-close").addEventListener("click", closeDrawer);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !$("drawer").hidden) closeDrawer();
});

// ---- finished runs and the stats --------------------------------------------------------------------------------

function seconds(ms) {
  const s = ms / 1000;
  return s < 60 ? `${s.toFixed(1)} s` : s < 3600 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(1)} h`;
}

async function refreshFinished() {
  const response = await api("/finished?pageSize=20");
  if (!response.ok) return;
  const rows = [];
  for (const run of (await response.json()).data.tasks) {
    const tr = document.createElement("tr");
    tr.dataset.taskId = run.taskId;
    cell(tr, run.taskId);
    cell(tr, run.clientId || "–");
    cell(tr, run.outcome);
    cell(tr, seconds(run.durationMs));
    cell(tr, clock(run.endTime));
    rows.push(tr);
  }
  $("finished-rows").replaceChildren(...rows);
}

let finishedTimer = 0;
function refreshFinishedSoon() {
  clearTimeout(finishedTimer);
  finishedTimer = setTimeout(() => {
    for (const refresh of [refreshFinished, refreshChart, refreshStats]) refresh().catch(() => {});
  }, 300);
}

const SVG = "http://www.w3.org/2000/svg";

async function refreshChart() {
  const since = new Date(Date.now() - 3600_000).toISOString();
  const perMinute = new Array(60).fill(0);
  const now = Date.now();
  // the last hour's runs, a page of 1,000 at a time (the history holds history_size runs at most)
  for (let page = 1, pages = 1; page <= Math.min(pages, 50); page += 1) {
    const response = await api(`/finished?pageSize=1000&page=${page}&endedAfter=${encodeURIComponent(since)}`);
    if (!response.ok) return;
    const data = (await response.json()).data;
    pages = data.totalPages;
    for (const run of data.tasks) {
      const minute = 59 - Math.floor((now - Date.parse(run.endTime)) / 60_000);
      if (minute >= 0 && minute < 60) perMinute[minute] += 1;
    }
  }
  const top = Math.max(1, ...perMinute);
  const chart = $("chart");
  const bars = perMinute.map((count, minute) => {
    const rect = document.createElementNS(SVG, "rect");
    const height = (count / top) * 78;
    rect.setAttribute("x", String(minute * 5));
    rect.setAttribute("y", String(80 - height));
    rect.setAttribute("width", "4");
    rect.setAttribute("height", String(height));
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${count} finished, ${59 - minute} min ago`;
    rect.append(title);
    return rect;
  });
  chart.replaceChildren(...bars);
  $("chart-caption").textContent = `Tasks finished per minute, last hour (most in a minute: ${top})`;
}

function definitions(list, pairs) {
  const items = [];
  for (const [term, value] of pairs) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    items.push(dt, dd);
  }
  list.replaceChildren(...items);
}

async function refreshStats() {
  const response = await api("/stats");
  if (!response.ok) return;
  const stats = (await response.json()).data;
  const all = stats.finished.durationSeconds.all;
  const fmt = (s) => (s === null ? "–" : seconds(s * 1000));
  definitions($("durations"), [
    ["duration p50", fmt(all.p50)],
    ["duration p90", fmt(all.p90)],
    ["duration p99", fmt(all.p99)],
    ["finished, last hour", String(stats.finished.throughput.last60m.finished)],
  ]);
  const byStatus = Object.entries(stats.running.byStatus);
  definitions($("by-status"), [...byStatus.map(([status, count]) => [status, String(count)]), ["stalled", String(stats.running.stalled)]]);
  const select = $("f-status");
  if (select.options.length === 1) {
    for (const [status] of byStatus) select.append(new Option(status, status));
  }
}

function refreshSide() {
  for (const refresh of [refreshFinished, refreshChart, refreshStats, refreshHealth]) refresh().catch(() => {});
}

function tick() {
  if (state.ageAt) {
    const [age, at] = state.ageAt;
    $("age").textContent = `${Math.round(age + (performance.now() - at) / 1000)} s old`;
  }
  // "12 s ago" moves with time: the visible rows only
  for (const [, [tr, task]] of rowsById) tr.children[5].textContent = ago(task.lastUpdateTime);
}

setInterval(tick, 1000);
setInterval(refreshHealth, 3000);
setInterval(() => {
  for (const refresh of [refreshFinished, refreshStats]) refresh().catch(() => {});
}, 10_000);
setInterval(() => refreshChart().catch(() => {}), 60_000);
refreshSide();
follow();
