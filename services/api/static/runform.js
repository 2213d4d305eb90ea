// The "new run" form: name, prior_fraction, steps, and a problem picked from the registered ones
// (GET /problems) with its parameters, observations and reference shown, its factory's
// parameters as inputs (from the listed JSON schema: numbers, strings, booleans; anything else,
// arrays included, as JSON text) and its observation. It sends
// {"problem": {"name", "params", "observation"}}; "default config" sends no problem section (a
// v1 config: the built-in gaussian). A 422 is shown under the field its `loc` names.

import { $, ApiError, api, locText, showError } from "./api.js";

export const form = { problems: [], errors: {} }; // what the browser test reads

const FIXED_FIELDS = { name: "#new-run-name", "buffer.prior_fraction": "#new-run-prior-fraction",
                       "training.steps": "#new-run-steps", problem: "#new-run-problem",
                       "problem.name": "#new-run-problem", "problem.observation": "#new-run-observation",
                       "problem.params": "#new-run-params" };

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

function priorText(prior) {
  const p = prior || {};
  if (p.family === "uniform") return `U(${p.low}, ${p.high})`;
  if (p.family === "normal") return `N(${p.loc}, ${p.scale}²)`;
  if (p.family === "log_uniform") return `LogU(${p.low}, ${p.high})`;
  return p.family || "?";
}

function selected() {
  const name = $("#new-run-problem").value;
  return form.problems.find((p) => p.name === name) || null;
}

function describe(problem) {
  const info = $("#new-run-problem-info");
  if (!problem) {
    info.textContent = "default config: the built-in gaussian problem, one parameter z0 ~ N(0, 1) (a v1 config)";
    return;
  }
  if (problem.error) { info.textContent = `${problem.name} cannot be built here: ${problem.error}`; return; }
  const params = (problem.parameters || []).map((p) => `${p.name} ~ ${priorText(p.prior)}`).join(", ");
  const reference = problem.reference && problem.reference.length
    ? `reference posterior: ${problem.reference.join(", ")}` : "no reference posterior";
  info.replaceChildren(
    el("span", { className: "problem-description", textContent: problem.description || problem.name }),
    el("span", { textContent: ` · parameters (with the factory's defaults): ${params}` }),
    el("span", { textContent: ` · x of shape (${(problem.x_shape || []).join(", ")})` }),
    el("span", { textContent: ` · observations: ${(problem.observations || []).join(", ") || "none"}` }),
    el("span", { textContent: ` · ${reference}` }));
}

function shown(value) {
  return value === null || value === undefined ? "" : typeof value === "string" ? value : JSON.stringify(value);
}

function paramInput(name, schema) {
  const type = schema.type;
  const input = el("input", { id: `new-run-param-${name}`, name });
  input.dataset.param = name;
  input.dataset.kind = type === "integer" || type === "number" ? "number"
    : type === "boolean" ? "boolean" : type === "string" ? "string" : "json";
  if (input.dataset.kind === "number") {
    input.type = "number";
    input.step = type === "integer" ? "1" : "any";
  } else if (input.dataset.kind === "boolean") {
    input.type = "checkbox";
    input.checked = Boolean(schema.default);
  } else if (input.dataset.kind === "json") {
    input.placeholder = type === "array" ? "JSON, e.g. [0.1, 0.2]" : "JSON";
  }
  if (input.dataset.kind !== "boolean") input.value = shown(schema.default);
  input.dataset.initial = input.dataset.kind === "boolean" ? String(input.checked) : input.value;
  const what = input.dataset.kind === "json" ? `${type || "value"}, as JSON` : type || "value";
  return el("label", { className: "param" }, `${name} (${what})`, input,
            el("small", { className: "field-error", id: `new-run-error-param-${name}` }));
}

function renderProblem() {
  const problem = selected();
  describe(problem);
  const params = $("#new-run-params");
  const properties = (problem && problem.factory && problem.factory.properties) || {};
  params.replaceChildren(...Object.entries(properties).map(([name, schema]) => paramInput(name, schema)));
  const observations = (problem && problem.observations) || [];
  $("#new-run-observation").replaceChildren(...observations.map((o) => el("option", { value: o, textContent: o })));
  $("#new-run-observation-label").hidden = !observations.length;
  clearFieldErrors();
}

export async function loadProblems() {
  const page = await api("GET", "/problems");
  form.problems = page.data;
  const select = $("#new-run-problem");
  const keep = select.value;
  select.replaceChildren(el("option", { value: "", textContent: "default config (gaussian, v1)" }),
    ...page.data.map((p) => el("option", { value: p.name, textContent: p.name, disabled: Boolean(p.error),
                                            title: p.error || p.description || "" })));
  if (page.data.some((p) => p.name === keep)) select.value = keep;
  renderProblem();
}

// The factory parameters that differ from their defaults; a JSON field that does not parse is
// reported under it and stops the submission.
function collectParams() {
  const params = {};
  let ok = true;
  for (const input of document.querySelectorAll("#new-run-params input[data-param]")) {
    const name = input.dataset.param, kind = input.dataset.kind;
    const now = kind === "boolean" ? String(input.checked) : input.value;
    if (now === input.dataset.initial) continue;
    if (kind === "boolean") params[name] = input.checked;
    else if (kind === "number") { if (input.value !== "") params[name] = Number(input.value); }
    else if (kind === "string") params[name] = input.value;
    else if (input.value.trim() !== "") {
      try { params[name] = JSON.parse(input.value); } catch (err) {
        fieldError(`problem.params.${name}`, `not JSON: ${err.message}`);
        ok = false;
      }
    }
  }
  return ok ? params : null;
}

function errorBox(field) {
  const param = /^problem\.params\.(.+)$/.exec(field);
  if (param) return document.getElementById(`new-run-error-param-${param[1]}`);
  const selector = FIXED_FIELDS[field];
  return selector ? $(`${selector}-error`) : null;
}

function fieldError(field, message) {
  const box = errorBox(field) || errorBox(field.split(".").slice(0, 2).join("."));
  if (!box) return false;
  box.textContent = box.textContent ? `${box.textContent}; ${message}` : message;
  form.errors[field] = message;
  return true;
}

function clearFieldErrors() {
  form.errors = {};
  document.querySelectorAll("#new-run-form .field-error").forEach((box) => { box.textContent = ""; });
}

export function runBody() {
  const body = {
    name: $("#new-run-name").value,
    buffer: { prior_fraction: Number($("#new-run-prior-fraction").value) },
    training: { steps: Number($("#new-run-steps").value) },
    start: $("#new-run-start").checked,
  };
  const problem = selected();
  if (problem) {
    const params = collectParams();
    if (params === null) return null;
    body.problem = { name: problem.name, params };
    if ($("#new-run-observation").value) body.problem.observation = $("#new-run-observation").value;
  }
  return body;
}

// Submit the form; the created run, or null (the errors are shown).
export async function submitRun() {
  showError("");
  clearFieldErrors();
  const body = runBody();
  if (body === null) return null;
  try {
    return await api("POST", "/runs", body);
  } catch (err) {
    if (err instanceof ApiError && err.status === 422 && Array.isArray(err.detail)) {
      const unplaced = err.detail.filter((e) => !fieldError(locText(e.loc), e.msg));
      if (unplaced.length) showError(`POST /runs: 422 ${unplaced.map((e) => `${locText(e.loc)}: ${e.msg}`).join("; ")}`);
    } else {
      showError(err.message);
    }
    return null;
  }
}

export function wireRunForm() {
  $("#new-run-problem").addEventListener("change", renderProblem);
  renderProblem();
}
