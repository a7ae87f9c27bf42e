// Helpers shared by the audit page and the concept page (plain JS, no build step).
"use strict";

const TOKEN_KEY = "recsae-audit-token";
const $ = (s) => document.querySelector(s);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
}
const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function detailText(body) {
  if (body && typeof body === "object" && "detail" in body) {
    const d = body.detail;
    return Array.isArray(d) ? d.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ") : String(d);
  }
  return String(body).slice(0, 300);
}

async function api(path, opts = {}) {
  const headers = Object.assign({ "X-RecSAE-Audit": "1" }, opts.headers || {});
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  const r = await fetch(path, Object.assign({}, opts, { headers }));
  const json = (r.headers.get("content-type") || "").includes("json");
  const body = json ? await r.json() : await r.text();
  if (!r.ok) {
    const err = new Error(r.status === 401 ? "401: audit token missing or wrong — enter it at the top right" : `${r.status}: ${detailText(body)}`);
    err.status = r.status;
    err.body = body;
    throw err;
  }
  return body;
}

// a concept's short name: the dictionary writes "name — details"
function shortLabel(description) { return description ? description.split(" — ")[0].split(";")[0] : null; }

// a histogram as an SVG with both axes labelled (counts over equal bins from 0 to max)
function histogramSvg(counts, max, xLabel, yLabel) {
  const W = 420, H = 170, L = 44, B = 34, T = 8, R = 10;
  const top = Math.max(1, ...counts);
  const ns = "http://www.w3.org/2000/svg";
  const s = (tag, attrs, text) => { const e = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text !== undefined) e.textContent = text; return e; };
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "histogram", role: "img",
    "aria-label": `${yLabel} by ${xLabel}: ${counts.join(", ")}` });
  const bw = (W - L - R) / Math.max(1, counts.length);
  counts.forEach((c, i) => {
    const h = (H - B - T) * c / top;
    const bar = s("rect", { x: L + i * bw + 1, y: H - B - h, width: Math.max(1, bw - 2), height: h, "data-count": c });
    bar.append(s("title", {}, `${fmt(max * i / counts.length, 2)}–${fmt(max * (i + 1) / counts.length, 2)}: ${c} users`));
    svg.append(bar);
  });
  svg.append(s("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  svg.append(s("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  svg.append(s("text", { x: L, y: H - B + 14, "text-anchor": "middle" }, "0"));
  svg.append(s("text", { x: W - R, y: H - B + 14, "text-anchor": "end" }, fmt(max, 2)));
  svg.append(s("text", { x: (L + W) / 2, y: H - 4, "text-anchor": "middle" }, xLabel));
  svg.append(s("text", { x: L - 4, y: T + 10, "text-anchor": "end" }, String(top)));
  svg.append(s("text", { x: L - 4, y: H - B, "text-anchor": "end" }, "0"));
  svg.append(s("text", { x: 12, y: (T + H - B) / 2, transform: `rotate(-90 12 ${(T + H - B) / 2})`, "text-anchor": "middle" }, yLabel));
  return svg;
}

function setStatus(node, text, stateName, isError) {
  node.textContent = text;
  node.classList.toggle("error", !!isError);
  if (stateName) node.dataset.state = stateName;
}
