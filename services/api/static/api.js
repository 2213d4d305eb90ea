// The REST API as the page calls it: one `api()` for every request, and the page's error banner.
// An answer that is not 2xx throws `ApiError` (its `status` and the server's `detail`: a string, or
// a 422's list of {loc, msg, type}); no answer at all throws `Unreachable`.

export const $ = (sel) => document.querySelector(sel);

export function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

export function token() {
  return $("#token").value.trim();
}

export class Unreachable extends Error {}

export class ApiError extends Error {
  constructor(message, status, detail) {
    super(message);
    this.status = status;
    this.detail = detail;
  }

  // The server's detail in words (a 422's errors one per field, `field: message`).
  get words() {
    if (Array.isArray(this.detail)) return this.detail.map((e) => `${locText(e.loc)}: ${e.msg}`).join("; ");
    return String(this.detail);
  }
}

// ["body", "problem", "params", "dim"] -> "problem.params.dim"
export function locText(loc) {
  const parts = (loc || []).map(String);
  return (parts[0] === "body" || parts[0] === "query" ? parts.slice(1) : parts).join(".");
}

export function unreachableMessage() {
  return `The falcon-lite server at ${location.origin} does not answer: it may be stopped, restarting ` +
    "or out of reach of this browser. The page retries every 2 s.";
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token() && method !== "GET") headers.Authorization = `Bearer ${token()}`;
  let response, text;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    text = await response.text();
  } catch (err) {
    // fetch() rejects only when no answer came (server down, network, CORS): "Failed to fetch".
    throw new Unreachable(`${method} ${path} got no answer. ${unreachableMessage()}`);
  }
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (err) { data = null; }
  if (!response.ok) {
    const detail = data && data.detail !== undefined ? data.detail : text;
    const error = new ApiError("", response.status, detail);
    error.message = `${method} ${path}: ${response.status} ${error.words}`;
    throw error;
  }
  return data;
}
