// A small Markdown renderer for the stress report (report.md): the subset it uses, built as DOM
// nodes. Text only ever goes in through textContent and attributes are set one by one, so
// nothing in the report is parsed as HTML (no innerHTML anywhere).
//
// Blocks: ATX headings (#..######), paragraphs, pipe tables (header, separator row with
// optional :--: alignment, rows), fenced code blocks (```), "- " / "* " and "1. " lists.
// Inline: `code`, **strong**, *em* / _em_, ![alt](src), [text](href).
// Links and images keep only relative, #, http: and https: addresses; `resolve(src)` maps an
// image's address (report.md names its plots by file name) to the URL the page loads.
"use strict";

function safeUrl(url) {
  // http(s) or an address without a scheme (relative, #, /); never javascript:, data: etc.
  if (/^https?:\/\//i.test(url)) return url;
  return /^[^/?#]*:/.test(url) ? null : url;
}

// Inline spans, earliest match first; a span's inside is parsed again where it can hold text.
const INLINE = [
  ["code", /`([^`]+)`/],
  ["image", /!\[([^\]]*)\]\(([^()\s]+)\)/],
  ["link", /\[([^\]]+)\]\(([^()\s]+)\)/],
  ["strong", /\*\*(.+?)\*\*/],
  ["em", /\*([^*\s][^*]*?)\*|\b_([^_]+?)_\b/],
];

function inline(text, parent, resolve) {
  while (text) {
    let best = null;
    for (const [kind, re] of INLINE) {
      const m = re.exec(text);
      if (m && (best === null || m.index < best.m.index)) best = { kind, m };
    }
    if (best === null) { parent.append(text); return; }
    const { kind, m } = best;
    if (m.index) parent.append(text.slice(0, m.index));
    if (kind === "code") {
      const code = document.createElement("code");
      code.textContent = m[1];
      parent.append(code);
    } else if (kind === "image") {
      const src = safeUrl(m[2]);
      if (src) {
        const img = document.createElement("img");
        img.src = resolve ? resolve(src) : src;
        img.alt = m[1];
        parent.append(img);
      } else {
        parent.append(m[0]);
      }
    } else if (kind === "link") {
      const href = safeUrl(m[2]);
      const node = document.createElement(href ? "a" : "span");
      if (href) { node.href = href; node.rel = "noopener noreferrer"; }
      inline(m[1], node, resolve);
      parent.append(node);
    } else {
      const node = document.createElement(kind);
      inline(m[1] ?? m[2], node, resolve);
      parent.append(node);
    }
    text = text.slice(m.index + m[0].length);
  }
}

function cells(line) {
  return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
}

const SEPARATOR = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

function table(lines, resolve) {
  const align = cells(lines[1]).map((c) => (c.endsWith(":") ? (c.startsWith(":") ? "center" : "right") : null));
  const node = document.createElement("table");
  const head = node.createTHead().insertRow();
  for (const c of cells(lines[0])) {
    const th = document.createElement("th");
    inline(c, th, resolve);
    head.append(th);
  }
  const body = node.createTBody();
  for (const line of lines.slice(2)) {
    const tr = body.insertRow();
    cells(line).forEach((c, i) => {
      const td = tr.insertCell();
      if (align[i]) td.style.textAlign = align[i];
      inline(c, td, resolve);
    });
  }
  return node;
}

function renderMarkdown(md, resolve) {
  const out = document.createDocumentFragment();
  const lines = String(md ?? "").replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) { i++; continue; }
    if ((m = /^\s*(```|~~~)\s*([\w-]*)\s*$/.exec(line))) {
      const fence = m[1];
      const body = [];
      for (i++; i < lines.length && !lines[i].trim().startsWith(fence); i++) body.push(lines[i]);
      i++;
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      if (m[2]) code.dataset.language = m[2];
      code.textContent = body.join("\n");
      pre.append(code);
      out.append(pre);
    } else if ((m = /^(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line))) {
      const h = document.createElement(`h${Math.min(6, m[1].length + 2)}`); // the page's own h1/h2 come first
      inline(m[2], h, resolve);
      out.append(h);
      i++;
    } else if (line.trim().startsWith("|") && i + 1 < lines.length && SEPARATOR.test(lines[i + 1])) {
      const block = [];
      while (i < lines.length && lines[i].trim().startsWith("|")) block.push(lines[i++]);
      const scroll = document.createElement("div"); // a wide table scrolls alone, not the page
      scroll.className = "md-table";
      scroll.append(table(block, resolve));
      out.append(scroll);
    } else if ((m = /^\s*([-*]|\d+\.)\s+/.exec(line))) {
      const ordered = /\d/.test(m[1]);
      const list = document.createElement(ordered ? "ol" : "ul");
      while (i < lines.length && (m = /^\s*([-*]|\d+\.)\s+(.*)$/.exec(lines[i])) && /\d/.test(m[1]) === ordered) {
        const li = document.createElement("li");
        inline(m[2], li, resolve);
        list.append(li);
        i++;
      }
      out.append(list);
    } else {
      const text = [lines[i++].trim()];
      while (i < lines.length && lines[i].trim() && !/^(#{1,6}\s|\s*```|\s*~~~|\s*\||\s*([-*]|\d+\.)\s)/.test(lines[i])) {
        text.push(lines[i++].trim());
      }
      const p = document.createElement("p");
      inline(text.join(" "), p, resolve);
      out.append(p);
    }
  }
  return out;
}

window.renderMarkdown = renderMarkdown;
