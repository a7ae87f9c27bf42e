// Audit page: export the audit shown as JSON or CSV (loaded before audit.js; uses its state at call time).
"use strict";

// -- export ---------------------------------------------------------------------------------------
function exportJson() {
  return JSON.stringify({ exported_at: new Date().toISOString(), link: location.href,
    bundle: state.bundle && { version: state.bundle.version, bundle_hash: state.bundle.bundle_hash },
    who: state.who, k: Number($("#k").value), suppress: [...state.suppress].sort((a, b) => a - b),
    strength: suppressStrength(), baseline: state.baseline, policy: state.policy || null,
    before: state.base, after: state.current, history: state.history }, null, 2);
}

function csvCell(v) {
  const s = v === null || v === undefined ? "" : String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function exportCsv() {
  const rows = [["list", "rank", "item_id", "title", "score", "part", "latent", "concept", "value"]];
  for (const [name, body] of [["before", state.base], ["after", state.current]]) {
    if (!body) continue;
    for (const it of body.items) {
      const ex = it.explanation || { contributions: [], bias: null, error: null };
      for (const c of ex.contributions) rows.push([name, it.rank, it.item_id, it.title, it.score, "concept", c.latent,
        shortLabel(conceptOf(c.latent).description || c.label) || "", c.contribution]);
      rows.push([name, it.rank, it.item_id, it.title, it.score, "shared baseline", "", "", ex.bias]);
      rows.push([name, it.rank, it.item_id, it.title, it.score, "not captured by concepts", "", "", ex.error]);
    }
    for (const a of body.active_latents) rows.push([name, "", "", "", "", a.suppressed ? "active concept (removed)" : "active concept",
      a.latent, shortLabel(a.description) || "", a.activation]);
  }
  if (state.history) for (const c of state.history.concepts) for (const t of c.top)
    rows.push(["history", "", t.item_id, t.title, "", "drives concept", c.latent, shortLabel(c.description) || "", t.attribution]);
  return rows.map((r) => r.map(csvCell).join(",")).join("\n") + "\n";
}

function download(text, type, name) {
  const a = el("a", { href: URL.createObjectURL(new Blob([text], { type })), download: name });
  document.body.append(a); a.click(); a.remove();
}
window.auditExport = { json: exportJson, csv: exportCsv };

