// The dashboard page: one EventSource, a picture of the queue each second, drawn as it comes.
// Every text from the broker or the workers goes in with textContent, never as HTML.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);

function text(id, value) {
  $(id).textContent = value === null || value === undefined ? "-" : String(value);
}

function pill(id, label, ok) {
  const el = $(id);
  el.textContent = label;
  el.className = "pill " + (ok ? "ok" : "warn");
}

function cell(row, value, cls) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "" : String(value);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(tableId, items, draw) {
  const body = document.querySelector("#" + tableId + " tbody");
  const rows = items.map((item) => {
    const tr = document.createElement("tr");
    draw(tr, item);
    return tr;
  });
  body.replaceChildren(...rows);
}

const ms = (seconds) => (seconds === null || seconds === undefined ? "" : (seconds * 1000).toFixed(1));
const fmt = (value) => (value === null || value === undefined ? "-" : String(value));

// -- charts -------------------------------------------------------------------------------
const charts = {};

function chartOptions(series) {
  const width = Math.max(300, $("chart-depths").parentElement.clientWidth - 16);
  return {
    width, height: 180,
    scales: { x: { time: true } },
    axes: [{}, { size: 50 }],
    legend: { live: false },
    series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 2, spanGaps: false }))],
  };
}

const CHARTS = {
  "chart-depths": { columns: [1, 2, 3, 4], series: [
    ["ready", "#2f6fde"], ["unacked", "#e09a1a"], ["delayed, all queues", "#8a5cd6"], ["dead letters", "#c2362b"]] },
  "chart-throughput": { columns: [5, 6], series: [["succeeded/s", "#1f8a4c"], ["dead-lettered/s", "#c2362b"]] },
  "chart-latency": { columns: [7, 8], series: [["p50", "#2f6fde"], ["max", "#e09a1a"]] },
};

function drawCharts(series) {
  if (typeof uPlot === "undefined" || !series.length) return;
  for (const [id, spec] of Object.entries(CHARTS)) {
    const data = [series[0], ...spec.columns.map((c) => series[c])];
    if (!charts[id]) charts[id] = new uPlot(chartOptions(spec.series), data, $(id));
    else charts[id].setData(data);
  }
}

window.addEventListener("resize", () => {
  for (const [id, chart] of Object.entries(charts)) {
    chart.setSize({ width: Math.max(300, $(id).parentElement.clientWidth - 16), height: 180 });
  }
});

// -- the picture --------------------------------------------------------------------------
function render(p) {
  text("queue", p.about.queue);
  text("broker", p.about.broker);
  text("since", new Date(p.started * 1000).toLocaleTimeString());
  pill("events-status", "events: " + p.events, p.events === "listening");
  pill("depth-source", "depths: " + p.depth_source + (p.depth_error ? " (" + p.depth_error + ")" : ""),
    p.depths !== null);
  const d = p.depths || {};
  text("tile-ready", d.ready);
  text("tile-unacked", d.unacked === null ? "n/a" : d.unacked);
  text("tile-waiting", d.waiting);
  text("tile-dlq", p.dlq.count);
  text("tile-succeeded", p.totals.succeeded);
  text("tile-failed", p.totals.failed);
  text("tile-retried", p.totals.retried);
  text("tile-dead", p.totals.dead);
  text("tile-throughput", p.throughput);
  const l = p.latency_ms;
  text("tile-latency", l.count ? `${fmt(l.p50)} / ${fmt(l.p95)} / ${fmt(l.max)} ms` : "-");
  drawCharts(p.series);

  text("workers-count", p.workers.length);
  fill("workers", p.workers, (tr, w) => {
    tr.className = "status-" + w.status;
    cell(tr, w.host);
    cell(tr, w.pid, "num");
    cell(tr, w.ppid, "num");
    cell(tr, w.worker);
    cell(tr, w.status === "online" ? "online" : `${w.status}, last heard ${w.quiet}s ago`, "status");
    cell(tr, w.succeeded, "num");
    cell(tr, w.failed, "num");
    cell(tr, w.retried, "num");
    // How long it had held the task when it said so (heartbeats come every 2 s).
    const held = w.in_hand_since ? Math.max(0, w.heard_at - w.in_hand_since) : null;
    const since = held === null ? "" : ` (${held.toFixed(1)}s at the last heartbeat)`;
    cell(tr, w.in_hand ? `${w.in_hand_kind || "?"} ${w.in_hand}${since}` : "idle", "id");
  });

  fill("recent", p.recent, (tr, t) => {
    tr.className = "fate-" + t.fate;
    tr.dataset.taskId = t.task_id;
    cell(tr, t.task_id, "id");
    cell(tr, t.kind);
    cell(tr, t.fate.replace(/^task-/, ""), "fate");
    cell(tr, t.attempt, "num");
    cell(tr, ms(t.duration), "num");
    cell(tr, t.worker);
    cell(tr, [t.reason, t.error].filter(Boolean).join(": "), "why").title = t.error || "";
  });

  renderLetters(p.dlq);
}

function renderLetters(dlq) {
  text("dlq-count", dlq.count);
  $("replay-all").disabled = !dlq.count;
  $("purge").disabled = !dlq.count;
  const notes = [];
  if (dlq.count > dlq.letters.length) notes.push(`the oldest ${dlq.letters.length} of ${dlq.count} shown`);
  if (dlq.error) notes.push("error: " + dlq.error);
  text("dlq-note", notes.join("; "));
  fill("dlq", dlq.letters, (tr, letter) => {
    tr.dataset.taskId = letter.task_id || "";
    cell(tr, letter.task_id || "-", "id");
    cell(tr, letter.reason);
    cell(tr, letter.attempts < 0 ? "?" : letter.attempts, "num");
    cell(tr, letter.when);
    cell(tr, letter.error, "why").title = letter.error;
    const td = cell(tr, "");
    if (letter.task_id) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "replay";
      button.textContent = "Replay";
      button.addEventListener("click", () => act("/api/dlq/replay", { task_id: letter.task_id }));
      td.appendChild(button);
    }
  });
}

// -- actions ------------------------------------------------------------------------------
async function act(path, body) {
  const result = $("action-result");
  result.className = "";
  result.textContent = "working...";
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: { "X-Dashboard-Token": token, "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    if ("replayed" in answer) result.textContent = `replayed ${answer.replayed} dead letter(s)`;
    else if ("purged" in answer) result.textContent = `purged ${answer.purged} dead letter(s)`;
  } catch (error) {
    result.className = "error";
    result.textContent = String(error.message || error);
  }
}

$("replay-all").addEventListener("click", () => act("/api/dlq/replay", {}));
$("purge").addEventListener("click", () => {
  if (confirm("Delete every dead letter of this queue? This cannot be undone.")) act("/api/dlq/purge", {});
});

// -- the stream ---------------------------------------------------------------------------
const stream = new EventSource("/events?token=" + encodeURIComponent(token));
stream.addEventListener("picture", (event) => {
  pill("stream-status", "live", true);
  render(JSON.parse(event.data));
});
stream.addEventListener("error", () => pill("stream-status", "reconnecting...", false));
