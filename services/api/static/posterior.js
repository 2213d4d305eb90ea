// The selected run's posterior view: a corner plot of draws from its newest checkpoint
// (GET /runs/{id}/posterior) with the problem's reference posterior at the run's observation
// overlaid (GET /runs/{id}/reference, fetched once per run: it does not change). The estimate
// is fetched again every REFRESH_MS while the run is active, and once more when it ends (its
// final checkpoint); not after. Before a trained checkpoint the server answers 409: the page
// says so in the server's words.

import { $, ApiError, api } from "./api.js";
import { drawCorner } from "./corner.js";

const REFRESH_MS = 4000;
const ACTIVE = new Set(["running", "stopping"]);

// What the browser test reads (window.falconDashboard.posterior).
export const view = {
  runId: null,
  runStatus: null,
  fetches: 0, // GET /posterior calls for this run
  state: "idle", // loading | shown | none (409: no trained checkpoint) | error
  message: "",
  step: null,
  dim: null,
  marginals: 0,
  pairs: 0,
  reference: null, // the GET /reference body, or null
  referenceNote: "",
  timer: null,
  inflight: false,
  again: false,
};

function sampleCount(dim) {
  return Math.max(200, Math.min(2000, Math.floor(40000 / Math.max(dim, 1))));
}

function say(text) {
  $("#posterior-message").textContent = text;
}

function names(body) {
  if (body.parameters && body.parameters.length === body.dim) return body.parameters;
  return Array.from({ length: body.dim }, (_, i) => `θ${i}`);
}

function draw(body) {
  const ref = view.reference && view.reference.dim === body.dim ? view.reference : null;
  const drawn = drawCorner($("#posterior-plot"), { names: names(body), samples: body.samples,
                                                   reference: ref ? ref.samples : null });
  view.marginals = drawn.marginals;
  view.pairs = drawn.pairs;
  view.state = "shown";
  view.step = body.step;
  view.dim = body.dim;
  $("#posterior-plot").dataset.reference = String(Boolean(ref));
  say(`${body.n} draws from the estimate at step ${body.step}` +
      (ref ? `, with ${ref.n} from the reference posterior (${ref.kind === "samples" ? "its samples" : "exact Gaussian"})`
           : `; ${view.referenceNote || "no reference"}`) + ".");
  $("#posterior-legend").hidden = false;
  $("#posterior-legend-reference").hidden = !ref;
}

async function refresh() {
  const runId = view.runId;
  clearTimeout(view.timer);
  view.timer = null;
  view.inflight = true;
  view.fetches += 1;
  try {
    const body = await api("GET", `/runs/${runId}/posterior?n=${sampleCount(view.dim || 2)}`);
    if (runId === view.runId) { view.last = body; draw(body); }
  } catch (err) {
    if (runId !== view.runId) return;
    view.state = err instanceof ApiError && err.status === 409 ? "none" : "error";
    view.message = err instanceof ApiError ? err.words : err.message;
    say(view.state === "none" ? `No posterior to show yet: ${view.message}` : `The posterior could not be fetched: ${view.message}`);
  } finally {
    if (runId === view.runId) {
      view.inflight = false;
      if (view.again) { view.again = false; refresh(); }
      else if (ACTIVE.has(view.runStatus)) view.timer = setTimeout(refresh, REFRESH_MS);
    }
  }
}

async function fetchReference(runId) {
  try {
    const body = await api("GET", `/runs/${runId}/reference?n=${sampleCount(view.dim || 2)}`);
    if (runId !== view.runId) return;
    view.reference = body;
    view.referenceNote = "";
  } catch (err) {
    if (runId !== view.runId) return;
    view.reference = null;
    view.referenceNote = err instanceof ApiError && err.status === 404
      ? `no reference: ${err.words}` : `the reference could not be fetched: ${err.message}`;
  }
  if (view.last && view.runId === runId) draw(view.last);
}

export function showPosterior(runId) {
  hidePosterior();
  Object.assign(view, { runId, runStatus: null, fetches: 0, state: "loading", message: "", step: null, dim: null,
                        marginals: 0, pairs: 0, reference: null, referenceNote: "", last: null, again: false });
  $("#posterior-plot").replaceChildren();
  $("#posterior-plot").dataset.reference = "false";
  $("#posterior-legend").hidden = true;
  say("loading the posterior…");
  fetchReference(runId);
  refresh();
}

export function hidePosterior() {
  clearTimeout(view.timer);
  view.timer = null;
  view.runId = null;
  view.inflight = false;
}

// The run's status, from its event stream: poll while it is active, fetch once more when it ends.
export function posteriorStatus(runId, status) {
  if (runId !== view.runId) return;
  const was = view.runStatus;
  view.runStatus = status;
  if (ACTIVE.has(status)) {
    if (!view.timer && !view.inflight) view.timer = setTimeout(refresh, REFRESH_MS);
  } else if (ACTIVE.has(was)) {
    clearTimeout(view.timer);
    view.timer = null;
    if (view.inflight) view.again = true; else refresh();
  }
}
