// The running list's event stream, read off the page's thread (a dedicated worker): the bytes, the SSE framing and
// JSON.parse of every event happen here, and what the page must apply is posted in parts of at most PART tasks. A
// change set of thousands of tasks (many turning stalled at once, a reconciliation) is megabytes of JSON: parsed on
// the page's thread it held the page for tens of milliseconds; a part is small to hand over.
//
// In:  {type: "open", serial, view, url, headers}: follow that stream (closing any other); {type: "close"}: stop.
// Out: each tagged with the serial it belongs to:
//      {kind: "open", view}: the stream is answered (200);
//      {kind: "snapshot", generation, tasks, first, last}: the whole view, in parts;
//      {kind: "changes", generation, upserted, removed, last}: a change set, in parts (only the last completes it);
//      {kind: "refused", status, retryAfter}: no stream (401, 429, 503, …);
//      {kind: "ended", retryMs}: the stream ended or the connection failed (retryMs: the server's `retry:`).
const PART = 500;
let controller = null;

onmessage = ({ data }) => {
  if (controller) controller.abort();
  controller = null;
  if (data.type === "open") {
    controller = new AbortController();
    follow(data, controller.signal);
  }
};

async function follow({ serial, view, url, headers }, signal) {
  const post = (message) => {
    if (!signal.aborted) postMessage({ ...message, serial });
  };
  let response;
  try {
    response = await fetch(url, { headers, cache: "no-store", signal });
  } catch {
    post({ kind: "ended", retryMs: null });
    return;
  }
  if (!response.ok || !response.body) {
    post({ kind: "refused", status: response.status, retryAfter: response.headers.get("retry-after") });
    return;
  }
  post({ kind: "open", view });
  let retryMs = null;
  try {
    retryMs = await read(response.body, post);
  } catch {
    // the connection failed or was closed: said below
  }
  post({ kind: "ended", retryMs });
}

async function read(body, post) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let searched = 0; // the buffer up to here holds no event's end: a large event is searched once, not per chunk
  let retryMs = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return retryMs;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n", searched)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      searched = 0;
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // a heartbeat
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + (line[colon + 1] === " " ? 2 : 1));
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
        else if (field === "retry" && /^\d+$/.test(text)) retryMs = Number(text);
      }
      if (event === "snapshot") postSnapshot(JSON.parse(data.join("\n")), post);
      else if (event === "changes") postChanges(JSON.parse(data.join("\n")), post);
    }
    searched = Math.max(0, buffer.length - 1);
  }
}

function postSnapshot({ generation, tasks }, post) {
  for (let start = 0; start === 0 || start < tasks.length; start += PART) {
    const last = start + PART >= tasks.length;
    post({ kind: "snapshot", generation, tasks: tasks.slice(start, start + PART), first: start === 0, last });
  }
}

function postChanges({ generation, upserted, removed }, post) {
  // removals first, then upserts (a task is one or the other in a set), PART at a time
  const parts = Math.max(1, Math.ceil((removed.length + upserted.length) / PART));
  for (let part = 0; part < parts; part += 1) {
    const from = part * PART;
    const to = from + PART;
    post({
      kind: "changes",
      generation,
      removed: removed.slice(from, to),
      upserted: upserted.slice(Math.max(0, from - removed.length), Math.max(0, to - removed.length)),
      last: part === parts - 1,
    });
  }
}
