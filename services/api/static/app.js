// falcon-lite dashboard: runs list and control, live charts from the SSE stream, stress view.
// Plain JS (ES modules) on top of the REST API (v1); charts are uPlot (vendor/, MIT). The
// new-run form is runform.js, the posterior view posterior.js (its corner plot corner.js).

import { $, Unreachable, api, showError, token, unreachableMessage } from "./api.js";
import { hidePosterior, posteriorStatus, showPosterior, view as posteriorView } from "./posterior.js";
import { form as runForm, loadProblems, submitRun, wireRunForm } from "./runform.js";

// The buffer chart stacks the live buffer from the metrics rows (each holds the trainer's view
// of the pool: `validation`, `trainable`, `trainable_prior`), so it shows the run's history,
// not only what happened since the page opened. The last GET /buffer body (tombstoned,
// purged, disfavoured) is summarised below it.
const LAYERS = [["validation", "validation"], ["trainable_prior", "trainable prior"],
                ["trainable_proposal", "trainable proposal"]];
const LAYER_COLORS = ["#9ecae1", "#31a354", "#3182bd"];
const MAX_POINTS = 4000;
const WAIT_ROWS = 200; // the trainer's waiting share is averaged over this many newest rows
const STRESS_WARMUP = 1000; // RunConfig's default training.warmup_steps: a stress run's prior-only steps

// State the browser test reads: the selected run and the data each chart holds.
const dash = (window.falconDashboard = {
  runId: null,
  lastEventId: null,
  streamOpen: false,
  series: emptySeries(),
  charts: {},
  pending: new Set(), // "action/runId" sent and not yet answered: its button stays disabled
  unreachable: false,
  posterior: posteriorView,
  form: runForm,
  stressPolls: 0, // GET /stress/{id} calls made (a job that has ended is not polled again)
});

function emptySeries() {
  return { steps: [], std_ratio: [], bias: [], loss: [], held_out_loss: [], waits: [],
           ...Object.fromEntries(LAYERS.map(([key]) => [key, []])) };
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
    const fraction = run.config.buffer ? run.config.buffer.prior_fraction : undefined;
    const cells = [run.id, run.name, run.status, outcomeText(run.outcome), run.step, fmt(d.std_ratio), fmt(bias),
                   fraction ?? "–"];
    cells.forEach((value, i) => {
      const td = document.createElement("td");
      if (i === 0) {
        const link = document.createElement("a");
        link.href = runHash(run.id);
        link.textContent = value;
        td.appendChild(link);
      } else {
        td.textContent = value;
      }
      if (i === 2) { td.className = `status status-${run.status}`; }
      if (i === 3) markOutcome(td, run.outcome);
      if (i >= 4) td.classList.add("num");
      tr.appendChild(td);
    });
    const td = document.createElement("td");
    for (const action of actionsFor(run.status)) {
      const button = document.createElement("button");
      button.textContent = action;
      button.dataset.action = action;
      button.dataset.runId = run.id;
      button.id = `run-${action}-${run.id}`;
      if (run.status === "stopping" || dash.pending.has(`${action}/${run.id}`)) {
        button.disabled = true; // a stop is under way: a second click would do nothing
        button.title = run.status === "stopping" ? "stopping…" : `${action} sent…`;
      }
      td.appendChild(button);
    }
    tr.appendChild(td);
    body.appendChild(tr);
    if (run.id === dash.runId) { showOutcome(run.outcome); posteriorStatus(run.id, run.status); }
  }
  $("#runs-count").textContent = `${page.data.length} of ${page.count} runs`;
}

async function refreshRuns() {
  try {
    const page = await api("GET", "/runs?limit=100");
    const health = await api("GET", "/health");
    renderRuns(page);
    $("#health").textContent = `${health.status} (${health.database})`;
    $("#health").dataset.state = "ok";
    if (dash.unreachable) { dash.unreachable = false; showError(""); }
  } catch (err) {
    $("#health").textContent = "unreachable";
    $("#health").dataset.state = "down";
    if (err instanceof Unreachable) { dash.unreachable = true; showError(unreachableMessage()); }
  }
}

async function runAction(action, runId, button) {
  try {
    showError("");
    if (button) button.disabled = true;
    dash.pending.add(`${action}/${runId}`);
    await api("POST", `/runs/${runId}/${action}`);
    dash.pending.delete(`${action}/${runId}`);
    if (action !== "stop" && runId === dash.runId && !dash.streamOpen) openStream(runId, false);
    await refreshRuns();
  } catch (err) {
    dash.pending.delete(`${action}/${runId}`);
    if (button) button.disabled = false;
    showError(err.message);
  }
}

async function createRun(event) {
  event.preventDefault();
  const run = await submitRun();
  if (!run) return;
  await refreshRuns();
  selectRun(run.id);
}

// A run's verdict once it ended (GET /runs/{id} `outcome`): against the problem's reference
// posterior, or from the explosion alarm where there is none.
const OUTCOMES = {
  calibrated: "calibrated: the estimate matches the reference posterior",
  exploded: "exploded: the estimate's width blew up against the reference",
  miscalibrated: "miscalibrated: the estimate is off the reference posterior",
  diverged: "diverged: training went non-finite",
  alarm_raised: "alarm raised: the ground-truth-free explosion alarm fired (no reference to judge by)",
  alarm_quiet: "alarm quiet: the explosion alarm never fired (no reference to judge by)",
};

function outcomeText(outcome) {
  return outcome ? outcome.replace("_", " ") : "–";
}

function markOutcome(node, outcome) {
  node.className = `outcome outcome-${outcome || "none"}`;
  node.dataset.outcome = outcome || "";
  node.title = outcome ? (OUTCOMES[outcome] || outcome) : "no verdict: the run has not ended";
}

function showOutcome(outcome) {
  const node = $("#detail-outcome");
  node.textContent = outcome ? `verdict: ${outcomeText(outcome)}` : "";
  markOutcome(node, outcome);
}

// ---- charts -------------------------------------------------------------------------
function tick(v) {
  if (v === null || v === undefined) return "";
  const a = Math.abs(v);
  return a !== 0 && (a >= 1e4 || a < 1e-2) ? v.toExponential(0) : String(+v.toPrecision(3));
}

// Legends show the newest values while the cursor is off the chart (uPlot blanks them).
function showLatest(u) {
  const n = u.data[0].length;
  if (n && u.cursor.idx == null) u.setLegend({ idx: n - 1 });
}

const legendHooks = { setData: [showLatest], setCursor: [showLatest] };

function legendValue(u, v) {
  return fmt(v);
}

// std_ratio's axis always spans 1 (calibrated), drawn as a dashed line: a log range padded to
// hold 1 whatever the data.
function aroundOne(u, min, max) {
  const lo = Math.min(min ?? 1, 1), hi = Math.max(max ?? 1, 1);
  return [lo / 1.5, hi * 1.5];
}

function logChart(target, label, color, reference) {
  const series = [{ label: "step", value: (u, v) => (v == null ? "–" : String(v)) },
                  { label, stroke: color, width: 1.5, spanGaps: true, points: { show: false }, value: legendValue }];
  if (reference) {
    series.push({ label: reference.label, stroke: "#888", width: 1, dash: [4, 4], points: { show: false },
                  value: () => String(reference.at) });
  }
  const opts = {
    width: 440, height: 240,
    scales: { x: { time: false }, y: { distr: 3, log: 10, ...(reference ? { range: aroundOne } : {}) } },
    series,
    axes: [{ label: "step" }, { size: 60, values: (u, vals) => vals.map(tick) }],
    legend: { show: true },
    hooks: legendHooks,
  };
  return new uPlot(opts, series.map(() => []), target);
}

// The training loss (on the step's batch) and, for an estimator with a density (the flow), the
// held-out loss (on each fresh batch before any step saw it): the two parting is overfitting.
function lossChart(target) {
  const series = [{ label: "step", value: (u, v) => (v == null ? "–" : String(v)) },
                  { label: "training", stroke: "#27a", width: 1.5, spanGaps: true, points: { show: false },
                    value: legendValue },
                  { label: "held out", stroke: "#c52", width: 1.5, spanGaps: true, points: { show: false },
                    value: legendValue }];
  const opts = { width: 440, height: 240, scales: { x: { time: false } }, series, legend: { show: true },
                 hooks: legendHooks, axes: [{ label: "step" }, { size: 60, values: (u, vals) => vals.map(tick) }] };
  return new uPlot(opts, series.map(() => []), target);
}

function bufferChart(target) {
  const series = [{ label: "step", value: (u, v) => (v == null ? "–" : String(v)) }];
  // Drawn as cumulative sums, largest first, so each fill shows one layer of the stack; the
  // legend shows each layer's own count.
  for (let i = LAYERS.length - 1; i >= 0; i--) {
    const [key, label] = LAYERS[i];
    series.push({ label, stroke: LAYER_COLORS[i], fill: LAYER_COLORS[i], width: 1, points: { show: false },
                  value: (u, v, si, idx) => (idx == null ? "–" : fmtCount(dash.series[key][idx])) });
  }
  const opts = { width: 440, height: 240, scales: { x: { time: false } }, series, hooks: legendHooks,
                 axes: [{ label: "step" }, { size: 60, values: (u, vals) => vals.map(tick) }] };
  return new uPlot(opts, [[], ...LAYERS.map(() => [])], target);
}

function fmtCount(v) {
  return v === null || v === undefined ? "–" : String(Math.round(v));
}

function makeCharts() {
  for (const id of ["#chart-buffer", "#chart-std-ratio", "#chart-bias", "#chart-loss"]) $(id).replaceChildren();
  dash.charts = {
    buffer: bufferChart($("#chart-buffer")),
    std: logChart($("#chart-std-ratio"), "std_ratio", "#27a", { label: "calibrated", at: 1 }),
    bias: logChart($("#chart-bias"), "|bias|/σ", "#c52"),
    loss: lossChart($("#chart-loss")),
  };
}

function positive(v) {
  return v !== null && v !== undefined && v > 0 ? v : null;
}

function thin(series) {
  // Keep at most MAX_POINTS per chart by dropping every other point.
  if (series.steps.length > MAX_POINTS) {
    for (const key of ["steps", "std_ratio", "bias", "loss", "held_out_loss", ...LAYERS.map(([k]) => k)]) {
      series[key] = series[key].filter((_, i) => i % 2 === 0);
    }
  }
}

function drawCharts() {
  const s = dash.series;
  dash.charts.std.setData([s.steps, s.std_ratio, s.steps.map(() => 1)]);
  dash.charts.bias.setData([s.steps, s.bias]);
  dash.charts.loss.setData([s.steps, s.loss, s.held_out_loss]);
  const cumulative = [];
  let running = s.steps.map(() => 0);
  for (const [key] of LAYERS) {
    running = running.map((v, i) => (v === null || s[key][i] === null ? null : v + s[key][i]));
    cumulative.push(running);
  }
  dash.charts.buffer.setData([s.steps, ...cumulative.reverse()]);
}

function count(v) {
  return typeof v === "number" ? v : null;
}

function finite(v) {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

function onDiagnostics(payload) {
  const s = dash.series;
  for (const row of payload.rows) {
    const bias = row.abs_bias_over_sigma ?? (row.bias_over_sigma == null ? null : Math.abs(row.bias_over_sigma));
    s.steps.push(row.step);
    s.std_ratio.push(positive(row.std_ratio));
    s.bias.push(positive(bias));
    s.loss.push(finite(row.loss));
    s.held_out_loss.push(finite(row.held_out_loss));
    const trainable = count(row.trainable), prior = count(row.trainable_prior);
    s.validation.push(count(row.validation));
    s.trainable_prior.push(prior);
    s.trainable_proposal.push(trainable === null || prior === null ? null : trainable - prior);
  }
  if (payload.buffer && payload.rows.length) {
    const b = payload.buffer;
    const tomb = b.counts.TOMBSTONE || { prior: 0, proposal: 0 };
    const dis = b.counts.DISFAVOURED || { prior: 0, proposal: 0 };
    const share = b.prior_share_trainable === null ? "–" : b.prior_share_trainable.toFixed(3);
    $("#buffer-summary").textContent = `prior share of the trainable pool ${share} (quota ${b.prior_fraction}); ` +
      `disfavoured ${dis.prior + dis.proposal}, tombstone ${tomb.prior + tomb.proposal}, purged ${b.purged}, ` +
      `total ever ${b.total}`;
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

function setDetailStatus(data) {
  $("#detail-status").textContent = data.status;
  $("#detail-status").dataset.status = data.status;
  if (data.outcome !== undefined) showOutcome(data.outcome);
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
  // A stream's first status is the run's current one; those after it may be replayed history,
  // so the posterior view takes the run's status from that first one, the runs list and `end`.
  let first = true;
  source.addEventListener("status", (e) => {
    track(e);
    const data = JSON.parse(e.data);
    setDetailStatus(data);
    if (first) { first = false; posteriorStatus(runId, data.status); }
  });
  source.addEventListener("diagnostics", (e) => { track(e); onDiagnostics(JSON.parse(e.data)); });
  source.addEventListener("end", (e) => {
    track(e);
    const data = JSON.parse(e.data);
    setDetailStatus(data);
    posteriorStatus(runId, data.status);
    source.close();
    dash.streamOpen = false;
  });
}

// ---- one run per URL: #/runs/<id> ------------------------------------------------------
function runHash(runId) {
  return `#/runs/${runId}`;
}

function runFromHash() {
  const m = /^#\/runs\/(\d+)$/.exec(location.hash);
  return m ? Number(m[1]) : null;
}

function selectRun(runId) {
  dash.runId = runId;
  if (location.hash !== runHash(runId)) location.hash = runHash(runId); // hashchange: already shown
  $("#run-detail").hidden = false;
  $("#detail-id").textContent = runId;
  const row = document.getElementById(`run-row-${runId}`);
  $("#detail-name").textContent = row ? row.children[1].textContent : "";
  document.querySelectorAll("#runs-table tr.selected").forEach((tr) => tr.classList.remove("selected"));
  if (row) row.classList.add("selected");
  showOutcome(null);
  $("#detail-step").textContent = ""; // not the previous run's
  $("#buffer-summary").textContent = "";
  openStream(runId, true);
  showPosterior(runId);
  // The run may be older than the 100 listed (or not exist): ask for it by id.
  api("GET", `/runs/${runId}`).then((run) => {
    if (dash.runId === runId) {
      $("#detail-name").textContent = run.name;
      showOutcome(run.outcome);
      posteriorStatus(runId, run.status);
    }
  }).catch((err) => {
    if (dash.runId === runId) showError(err.message);
  });
}

function closeRun() {
  if (dash.source) dash.source.close();
  dash.streamOpen = false;
  dash.runId = null;
  hidePosterior();
  $("#run-detail").hidden = true;
  document.querySelectorAll("#runs-table tr.selected").forEach((tr) => tr.classList.remove("selected"));
}

function followHash() {
  const runId = runFromHash();
  if (runId === null) closeRun();
  else if (runId !== dash.runId) selectRun(runId);
}

// ---- stress ---------------------------------------------------------------------------
function parseValue(text) {
  try { return JSON.parse(text); } catch (err) { return text; }
}

const STRESS_ENDED = new Set(["completed", "failed", "cancelled"]);

function renderStressReport(job) {
  if (!job.report) { $("#stress-report").replaceChildren(); $("#stress-plots").replaceChildren(); return; }
  // report.md names its plots by file name; the page loads them from the job's URLs.
  const byName = new Map(job.plots.map((url) => [url.split("/").pop(), url]));
  const report = renderMarkdown(job.report, (src) => byName.get(src) ?? src);
  const first = report.querySelector("table");
  if (first) first.id = "stress-table";
  $("#stress-report").replaceChildren(report);
  const shown = new Set([...$("#stress-report").querySelectorAll("img")].map((img) => img.getAttribute("src")));
  $("#stress-plots").replaceChildren(...job.plots.filter((url) => !shown.has(url)).map((url) => {
    const img = document.createElement("img");
    img.src = url;
    img.alt = url.split("/").pop();
    return img;
  }));
}

// Poll a job until it has ended (completed, failed or cancelled); a cancelled job shows the
// report of the runs that finished, if any did.
async function pollStress(jobId) {
  try {
    dash.stressPolls += 1;
    const job = await api("GET", `/stress/${jobId}`);
    const status = $("#stress-status");
    status.dataset.status = job.status;
    let text = `job ${job.id}: ${job.status}` + (job.error ? ` (${job.error})` : "");
    if (job.status === "cancelled") {
      const done = job.progress ? job.progress.done : 0;
      text += job.report ? ` — the report of the ${done} runs that finished before it:`
        : " — no run had finished, so there is no report";
    }
    status.textContent = text;
    if (job.status === "completed" || job.status === "cancelled") renderStressReport(job);
    if (!STRESS_ENDED.has(job.status)) setTimeout(() => pollStress(jobId), 1000);
  } catch (err) {
    showError(err.message);
  }
}

// A matrix shorter than the warm-up trains on prior samples only: all its rows come out the same.
function noteWarmup() {
  const steps = Number($("#stress-steps").value);
  const note = $("#stress-steps-note");
  note.dataset.warn = String(steps <= STRESS_WARMUP);
  note.textContent = steps <= STRESS_WARMUP
    ? `all ${steps} steps are warm-up (the first ${STRESS_WARMUP} train on prior samples only): every row will be the same`
    : `the first ${STRESS_WARMUP} steps are warm-up (prior samples only)`;
}

async function submitStress(event) {
  event.preventDefault();
  const jobId = $("#stress-job").value.trim();
  try {
    showError("");
    if (jobId) return pollStress(jobId);
    const values = $("#stress-values").value.split(",").map((v) => parseValue(v.trim()));
    const steps = Number($("#stress-steps").value);
    const job = await api("POST", "/stress", {
      grid: { [$("#stress-key").value.trim()]: values },
      seeds: Number($("#stress-seeds").value),
      steps,
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
    if (button) return runAction(button.dataset.action, Number(button.dataset.runId), button);
    if (event.target.closest("a")) return; // the id's link: hashchange selects the run
    const row = event.target.closest("tr[data-run-id]");
    if (row) selectRun(Number(row.dataset.runId));
  });
  wireRunForm();
  loadProblems().catch((err) => showError(`the registered problems could not be listed: ${err.message}`));
  $("#stress-steps").addEventListener("input", noteWarmup);
  noteWarmup();
  window.addEventListener("hashchange", followHash);
  followHash();
  refreshRuns();
  setInterval(refreshRuns, 2000);
  document.body.dataset.ready = "true";
});
