// A corner plot of posterior samples, drawn on canvases: for d parameters, d 1-D marginals
// (histograms, on the diagonal) and d(d-1)/2 pairwise 2-D histograms (below it), one canvas
// per panel; a reference posterior, when given, is overlaid in orange (its histogram's outline
// on the marginals, a scatter of its draws on the pairs). Labels are DOM text, never HTML.
//
// drawCorner(box, {names, samples, reference}) -> {marginals, pairs}: samples and reference are
// arrays of rows (n, d); reference may be null.

export const ESTIMATE_FILL = "#9ecae1";
export const ESTIMATE_STROKE = "#3182bd";
export const REFERENCE_COLOR = "#e6550d";
const BINS_1D = 30;
const BINS_2D = 24;
const REFERENCE_POINTS = 400; // a pair panel's reference scatter draws at most this many points

function quantile(sorted, q) {
  if (!sorted.length) return NaN;
  const at = (sorted.length - 1) * q, lo = Math.floor(at), hi = Math.ceil(at);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo);
}

// Each parameter's axis: the central 99 % of the estimate's and the reference's draws together,
// padded by 5 % (a point mass gets a small interval of its own).
function ranges(samples, reference, d) {
  const out = [];
  for (let j = 0; j < d; j++) {
    let lo = Infinity, hi = -Infinity;
    for (const rows of [samples, reference]) {
      if (!rows || !rows.length) continue;
      const column = rows.map((r) => r[j]).filter(Number.isFinite).sort((a, b) => a - b);
      if (!column.length) continue;
      lo = Math.min(lo, quantile(column, 0.005));
      hi = Math.max(hi, quantile(column, 0.995));
    }
    if (!Number.isFinite(lo)) { lo = 0; hi = 1; }
    const pad = hi > lo ? 0.05 * (hi - lo) : Math.max(Math.abs(lo) * 1e-3, 1e-9);
    out.push([lo - pad, hi + pad]);
  }
  return out;
}

function binOf(v, [lo, hi], bins) {
  if (!Number.isFinite(v) || v < lo || v > hi) return -1;
  return Math.min(bins - 1, Math.floor(((v - lo) / (hi - lo)) * bins));
}

function histogram(rows, j, range) {
  const counts = new Array(BINS_1D).fill(0);
  for (const r of rows) {
    const b = binOf(r[j], range, BINS_1D);
    if (b >= 0) counts[b] += 1;
  }
  const total = rows.length || 1;
  return counts.map((c) => c / total);
}

function canvas(size, kind, i, j, names) {
  const c = document.createElement("canvas");
  c.width = size;
  c.height = size;
  c.className = `corner-panel corner-${kind}`;
  c.dataset.kind = kind;
  c.dataset.x = names[j];
  if (kind === "pair") c.dataset.y = names[i];
  c.title = kind === "pair" ? `${names[i]} against ${names[j]}` : `${names[j]}: marginal`;
  return c;
}

function frame(ctx, size) {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, size, size);
  ctx.strokeStyle = "#ccc";
  ctx.lineWidth = 1;
  ctx.strokeRect(0.5, 0.5, size - 1, size - 1);
}

function drawMarginal(c, samples, reference, j, range) {
  const ctx = c.getContext("2d"), size = c.width, pad = 4;
  frame(ctx, size);
  const est = histogram(samples, j, range);
  const ref = reference ? histogram(reference, j, range) : null;
  const top = Math.max(...est, ...(ref || [0])) || 1;
  const w = (size - 2 * pad) / BINS_1D, h = size - 2 * pad;
  ctx.fillStyle = ESTIMATE_FILL;
  ctx.strokeStyle = ESTIMATE_STROKE;
  est.forEach((v, b) => {
    if (!v) return;
    const x = pad + b * w, y = pad + h * (1 - v / top);
    ctx.fillRect(x, y, w, pad + h - y);
  });
  const outline = (counts) => {  // the histogram's top edge as one stepped line
    ctx.beginPath();
    counts.forEach((v, b) => {
      const y = pad + h * (1 - v / top);
      if (b === 0) ctx.moveTo(pad, y); else ctx.lineTo(pad + b * w, y);
      ctx.lineTo(pad + (b + 1) * w, y);
    });
    ctx.stroke();
  };
  outline(est);
  if (ref) {
    ctx.strokeStyle = REFERENCE_COLOR;
    ctx.lineWidth = 2;
    outline(ref);
  }
}

function drawPair(c, samples, reference, i, j, rangeX, rangeY) {
  const ctx = c.getContext("2d"), size = c.width, pad = 4, inner = size - 2 * pad;
  frame(ctx, size);
  const grid = new Array(BINS_2D * BINS_2D).fill(0);
  let top = 0;
  for (const r of samples) {
    const bx = binOf(r[j], rangeX, BINS_2D), by = binOf(r[i], rangeY, BINS_2D);
    if (bx < 0 || by < 0) continue;
    const k = by * BINS_2D + bx;
    grid[k] += 1;
    top = Math.max(top, grid[k]);
  }
  const cell = inner / BINS_2D;
  // White to the estimate's stroke colour, by the cell's share of the fullest cell.
  const [r0, g0, b0] = [0x31, 0x82, 0xbd];
  grid.forEach((n, k) => {
    if (!n) return;
    const t = 0.15 + 0.85 * (n / top);
    const mix = (full) => Math.round(255 + (full - 255) * t);
    ctx.fillStyle = `rgb(${mix(r0)}, ${mix(g0)}, ${mix(b0)})`;
    const bx = k % BINS_2D, by = Math.floor(k / BINS_2D);
    ctx.fillRect(pad + bx * cell, pad + (BINS_2D - 1 - by) * cell, Math.ceil(cell), Math.ceil(cell));
  });
  if (reference) {
    ctx.fillStyle = REFERENCE_COLOR;
    const step = Math.max(1, Math.floor(reference.length / REFERENCE_POINTS));
    for (let k = 0; k < reference.length; k += step) {
      const vx = reference[k][j], vy = reference[k][i];
      if (!(vx >= rangeX[0] && vx <= rangeX[1] && vy >= rangeY[0] && vy <= rangeY[1])) continue;
      const x = pad + ((vx - rangeX[0]) / (rangeX[1] - rangeX[0])) * inner;
      const y = pad + (1 - (vy - rangeY[0]) / (rangeY[1] - rangeY[0])) * inner;
      ctx.fillRect(Math.round(x) - 1, Math.round(y) - 1, 2, 2);
    }
  }
}

function tickText(v) {
  const a = Math.abs(v);
  return a !== 0 && (a >= 1e4 || a < 1e-3) ? v.toExponential(2) : String(+v.toPrecision(3));
}

function label(text, className) {
  const el = document.createElement("div");
  el.className = className;
  el.textContent = text;
  return el;
}

export function drawCorner(box, { names, samples, reference }) {
  const d = names.length;
  const size = Math.max(90, Math.min(170, Math.floor(600 / d)));
  const range = ranges(samples, reference, d);
  const grid = document.createElement("div");
  grid.className = "corner-grid";
  grid.style.gridTemplateColumns = `auto repeat(${d}, ${size}px)`;
  let marginals = 0, pairs = 0;
  for (let i = 0; i < d; i++) {
    // the row's label: the y axis of its pair panels
    grid.appendChild(label(i > 0 ? names[i] : "", "corner-ylabel"));
    for (let j = 0; j < d; j++) {
      if (j > i) { grid.appendChild(document.createElement("div")); continue; }
      const kind = i === j ? "marginal" : "pair";
      const c = canvas(size, kind, i, j, names);
      if (kind === "marginal") { drawMarginal(c, samples, reference, j, range[j]); marginals += 1; }
      else { drawPair(c, samples, reference, i, j, range[j], range[i]); pairs += 1; }
      grid.appendChild(c);
    }
  }
  grid.appendChild(document.createElement("div"));
  for (let j = 0; j < d; j++) {
    const cell = label(names[j], "corner-xlabel");
    cell.appendChild(label(`${tickText(range[j][0])} … ${tickText(range[j][1])}`, "corner-range"));
    grid.appendChild(cell);
  }
  box.replaceChildren(grid);
  return { marginals, pairs };
}
