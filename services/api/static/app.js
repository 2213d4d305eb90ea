// falcon-lite dashboard: runs list and control, live charts from the SSE stream, stress view.
// Plain JS on top of the REST API (v1); charts are uPlot (vendor/, MIT).
"use strict";

// The chart stacks the live buffer; tombstoned and purged samples are counted below it
// (they grow without bound and would flatten the live layers).
const STATUSES = ["VALIDATION", "TRAINING", "DISFAVOURED"];
const ORIGINS = ["prior", "proposal"];
const LAYERS = STATUSES.flatMap((s) => ORIGINS.map((o) => [s, o]));
const LAYER_COLORS = ["#9ecae1", "#3182bd", "#a1d99b", "#31a354", "#fdae6b", "#e6550d"];
const MAX_POINTS = 4000;
const WAIT_ROWS = 200; // the trainer's waiting share is averaged over this many newest rows

// State the browser test reads: the selected run and the data each chart holds.
const dash = (window.falconDashboard = {
  runId: null,
  lastEventId: null,
  streamOpen: false,
  series: emptySeries(),
  charts: {},
});

function emptySeries() {
  return {
    steps: [], std_ratio: [], bias: [], waits: [],
    bufferSteps: [], buffer: Object.fromEntries(LAYERS.map(([s, o]) => [`${s}/${o}`, []])),
  };
}

const $ = (sel) => document.querySelector(sel);

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

function token() {
  return $("#token").value.trim();
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token() && method !== "GET") headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    let detail = data && data.detail !== undefined ? data.detail : text;
    if (Array.isArray(detail)) detail = detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
    throw new Error(`${method} ${path}: ${response.status} ${detail}`);
  }
  return data;
}

// ---- runs list ------------------------------------------------------------------------
function fmt(value) {
  return value === null || value === undefined ? "–" : Number(value).toPrecision(4);
}

function actionsFor(status) {
  if (status === "pending") return ["start"];
  if (status === "running" || status === "stopping") return ["stop"];
  if (status === "stopped" || status === "failed") return ["resume"];
  return [];
}

function renderRuns(page) {
  const body = $("#runs-table tbody");
  body.replaceChildren();
  for (const run of page.data) {
    const d = run.diagnostics || {};
    const bias = d.abs_bias_over_sigma ?? (d.bias_over_sigma === undefined ? null : Math.abs(d.bias_over_sigma));
    const tr = document.createElement("tr");
    tr.dataset.runId = run.id;
    tr.dataset.status = run.status;
    tr.id = `run-row-${run.id}`;
    if (run.id === dash.runId) tr.classList.add("selected");
    const cells = [run.id, run.name, run.status, run.step, fmt(d.std_ratio), fmt(bias), run.config.buffer.prior_fraction];
    cells.forEach((value, i) => {
      const td = document.createElement("td");
      td.textContent = value;
      if (i === 2) { td.className = `status status-${run.status}`; }
      if (i >= 3) td.classList.add("num");
      tr.appendChild(td);
    });
    const td = document.createElement("td");
    for (const action of actionsFor(run.status)) {
      const button = document.createElement("button");
      button.textContent = action;
      button.dataset.action = action;
      button.dataset.runId = run.id;
      button.id = `run-${action}-${run.id}`;
      td.appendChild(button);
    }
    tr.appendChild(td);
    body.appendChild(tr);
  }
  $("#runs-count").textContent = `${page.data.length} of ${page.count} runs`;
}

async function refreshRuns() {
  try {
    renderRuns(await api("GET", "/runs?limit=100"));
    const health = await api("GET", "/health");
    $("#health").textContent = `${health.status} (${health.database})`;
    $("#health").dataset.state = "ok";
  } catch (err) {
    $("#health").textContent = "unreachable";
    $("#health").dataset.state = "down";
  }
}

async function runAction(action, runId) {
  try {
    showError("");
    await api("POST", `/runs/${runId}/${action}`);
    if (action !== "stop" && runId === dash.runId && !dash.streamOpen) openStream(runId, false);
    await refreshRuns();
  } catch (err) {
    showError(err.message);
  }
}

async function createRun(event) {
  event.preventDefault();
  const body = {
    name: $("#new-run-name").value,
    buffer: { prior_fraction: Number($("#new-run-prior-fraction").value) },
    training: { steps: Number($("#new-run-steps").value) },
    start: true,
  };
  try {
    showError("");
    const run = await api("POST", "/runs", body);
    await refreshRuns();
    selectRun(run.id);
  } catch (err) {
    showError(err.message);
  }
}

// ---- charts -------------------------------------------------------------------------
function tick(v) {
  if (v === null || v === undefined) return "";
  const a = Math.abs(v);
  return a !== 0 && (a >= 1e4 || a < 1e-2) ? v.toExponential(0) : String(+v.toPrecision(3));
}

function logChart(target, label, color) {
  const opts = {
    width: 440, height: 240,
    scales: { x: { time: false }, y: { distr: 3, log: 10 } },
    series: [{ label: "step" }, { label, stroke: color, width: 1.5, spanGaps: true, points: { show: false } }],
    axes: [{ label: "step" }, { size: 60, values: (u, vals) => vals.map(tick) }],
    legend: { show: true },
  };
  return new uPlot(opts, [[], []], target);
}

function bufferChart(target) {
  const series = [{ label: "step" }];
  // Drawn as cumulative sums, largest first, so each fill shows one layer of the stack.
  for (let i = LAYERS.length - 1; i >= 0; i--) {
    const [s, o] = LAYERS[i];
    series.push({ label: `${s.toLowerCase()} ${o}`, stroke: LAYER_COLORS[i], fill: LAYER_COLORS[i], width: 1,
                  points: { show: false } });
  }
  const opts = { width: 440, height: 240, scales: { x: { time: false } }, series,
                 axes: [{ label: "step" }, { size: 60, values: (u, vals) => vals.map(tick) }] };
  return new uPlot(opts, [[], ...LAYERS.map(() => [])], target);
}

function makeCharts() {
  for (const id of ["#chart-buffer", "#chart-std-ratio", "#chart-bias"]) $(id).replaceChildren();
  dash.charts = {
    buffer: bufferChart($("#chart-buffer")),
    std: logChart($("#chart-std-ratio"), "std_ratio", "#27a"),
    bias: logChart($("#chart-bias"), "|bias|/σ", "#c52"),
  };
}

function positive(v) {
  return v !== null && v !== undefined && v > 0 ? v : null;
}

function thin(series) {
  // Keep at most MAX_POINTS per chart by dropping every other point.
  if (series.steps.length > MAX_POINTS) {
    for (const key of ["steps", "std_ratio", "bias"]) series[key] = series[key].filter((_, i) => i % 2 === 0);
  }
}

function drawCharts() {
  const s = dash.series;
  dash.charts.std.setData([s.steps, s.std_ratio]);
  dash.charts.bias.setData([s.steps, s.bias]);
  const cumulative = [];
  let running = s.bufferSteps.map(() => 0);
  for (const [st, o] of LAYERS) {
    running = running.map((v, i) => v + s.buffer[`${st}/${o}`][i]);
    cumulative.push(running);
  }
  dash.charts.buffer.setData([s.bufferSteps, ...cumulative.reverse()]);
}

function onDiagnostics(payload) {
  const s = dash.series;
  for (const row of payload.rows) {
    const bias = row.abs_bias_over_sigma ?? (row.bias_over_sigma == null ? null : Math.abs(row.bias_over_sigma));
    s.steps.push(row.step);
    s.std_ratio.push(positive(row.std_ratio));
    s.bias.push(positive(bias));
  }
  if (payload.buffer && payload.rows.length) {
    const b = payload.buffer;
    s.bufferSteps.push(payload.rows[payload.rows.length - 1].step);
    for (const [st, o] of LAYERS) s.buffer[`${st}/${o}`].push((b.counts[st] || {})[o] || 0);
    const tomb = b.counts.TOMBSTONE || { prior: 0, proposal: 0 };
    const share = b.prior_share_trainable === null ? "–" : b.prior_share_trainable.toFixed(3);
    $("#buffer-summary").textContent = `prior share of the trainable pool ${share} (quota ${b.prior_fraction}); ` +
      `tombstone ${tomb.prior + tomb.proposal}, purged ${b.purged}, total ever ${b.total}`;
  }
  thin(s);
  // Ray runs: how much of its time the trainer spent waiting for simulations, over the
  // newest rows received.
  for (const row of payload.rows) if (typeof row.wait_share === "number") s.waits.push(row.wait_share);
  s.waits = s.waits.slice(-WAIT_ROWS);
  const waiting = s.waits.length
    ? ` · trainer waits ${(100 * s.waits.reduce((a, b) => a + b, 0) / s.waits.length).toFixed(0)} %` : "";
  $("#detail-step").textContent = `step ${s.steps[s.steps.length - 1]}${waiting}`;
  drawCharts();
}

function setDetailStatus(status) {
  $("#detail-status").textContent = status;
  $("#detail-status").dataset.status = status;
}

// ---- live stream ----------------------------------------------------------------------
function openStream(runId, reset) {
  if (dash.source) dash.source.close();
  if (reset) { dash.series = emptySeries(); dash.lastEventId = null; makeCharts(); }
  // Reopened after a resume: go on from the last message instead of replaying the run.
  const after = dash.lastEventId ? `?last_event_id=${encodeURIComponent(dash.lastEventId)}` : "";
  const source = new EventSource(`/runs/${runId}/events${after}`);
  dash.source = source;
  dash.streamOpen = true;
  const track = (e) => { if (e.lastEventId) dash.lastEventId = e.lastEventId; };
  source.addEventListener("status", (e) => { track(e); setDetailStatus(JSON.parse(e.data).status); });
  source.addEventListener("diagnostics", (e) => { track(e); onDiagnostics(JSON.parse(e.data)); });
  source.addEventListener("end", (e) => {
    track(e);
    setDetailStatus(JSON.parse(e.data).status);
    source.close();
    dash.streamOpen = false;
  });
}

function selectRun(runId) {
  dash.runId = runId;
  $("#run-detail").hidden = false;
  $("#detail-id").textContent = runId;
  const row = document.getElementById(`run-row-${runId}`);
  $("#detail-name").textContent = row ? row.children[1].textContent : "";
  document.querySelectorAll("#runs-table tr.selected").forEach((tr) => tr.classList.remove("selected"));
  if (row) row.classList.add("selected");
  openStream(runId, true);
}

// ---- stress ---------------------------------------------------------------------------
function parseValue(text) {
  try { return JSON.parse(text); } catch (err) { return text; }
}

function markdownTable(md) {
  // report.md's first pipe table as an HTML table; other lines as paragraphs.
  const container = document.createElement("div");
  const lines = md.split("\n");
  let table = null;
  for (const line of lines) {
    if (line.trim().startsWith("|")) {
      const cells = line.trim().replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
      if (cells.every((c) => /^:?-+:?$/.test(c))) continue;
      if (!table) { table = document.createElement("table"); table.id = "stress-table"; container.appendChild(table); }
      const tr = document.createElement("tr");
      for (const c of cells) {
        const cell = document.createElement(table.rows.length ? "td" : "th");
        cell.textContent = c;
        tr.appendChild(cell);
      }
      table.appendChild(tr);
    } else if (line.trim()) {
      table = null;
      const p = document.createElement(line.startsWith("#") ? "h3" : "p");
      p.textContent = line.replace(/^#+\s*/, "");
      container.appendChild(p);
    }
  }
  return container;
}

async function pollStress(jobId) {
  try {
    const job = await api("GET", `/stress/${jobId}`);
    const status = $("#stress-status");
    status.dataset.status = job.status;
    status.textContent = `job ${job.id}: ${job.status}` + (job.error ? ` (${job.error})` : "");
    if (job.status === "completed") {
      $("#stress-report").replaceChildren(markdownTable(job.report));
      $("#stress-plots").replaceChildren(...job.plots.map((url) => {
        const img = document.createElement("img");
        img.src = url;
        img.alt = url.split("/").pop();
        return img;
      }));
    } else if (job.status !== "failed") {
      setTimeout(() => pollStress(jobId), 1000);
    }
  } catch (err) {
    showError(err.message);
  }
}

async function submitStress(event) {
  event.preventDefault();
  const jobId = $("#stress-job").value.trim();
  try {
    showError("");
    if (jobId) return pollStress(jobId);
    const values = $("#stress-values").value.split(",").map((v) => parseValue(v.trim()));
    const job = await api("POST", "/stress", {
      grid: { [$("#stress-key").value.trim()]: values },
      seeds: Number($("#stress-seeds").value),
      steps: Number($("#stress-steps").value),
    });
    $("#stress-job").value = job.id;
    pollStress(job.id);
  } catch (err) {
    showError(err.message);
  }
}

// ---- wiring ---------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("#token").value = localStorage.getItem("falcon-lite-token") || "";
  $("#token").addEventListener("change", () => localStorage.setItem("falcon-lite-token", token()));
  $("#new-run-form").addEventListener("submit", createRun);
  $("#stress-form").addEventListener("submit", submitStress);
  $("#runs-table").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) return runAction(button.dataset.action, Number(button.dataset.runId));
    const row = event.target.closest("tr[data-run-id]");
    if (row) selectRun(Number(row.dataset.runId));
  });
  refreshRuns();
  setInterval(refreshRuns, 2000);
  document.body.dataset.ready = "true";
});
