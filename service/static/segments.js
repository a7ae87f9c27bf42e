// Audit page: compare concept firing between two user groups (loaded before audit.js).
"use strict";

// -- segments --------------------------------------------------------------------------------------
function segGroup(side) {
  const kind = $(`#seg-${side}-kind`).value;
  if (kind === "rest") return null;
  if (kind === "ids") return { user_ids: $(`#seg-${side}-ids`).value.split(/[\s,]+/).filter(Boolean) };
  if (kind === "attr") return { user_attribute: $(`#seg-${side}-uattr`).value };
  return { feature: $(`#seg-${side}-feature`).value, min_share: Number($(`#seg-${side}-share`).value) };
}

function syncSeg() {
  for (const side of ["a", "b"]) {
    const kind = $(`#seg-${side}-kind`).value;
    $(`#seg-${side}-ids`).hidden = kind !== "ids";
    $(`#seg-${side}-feat`).hidden = kind !== "feature";
    $(`#seg-${side}-uattr`).hidden = kind !== "attr";
  }
}

async function loadFeatures() {
  if ($("#seg-a-feature").options.length) return;
  try {
    const r = await api("/audit/features");
    for (const side of ["a", "b"]) {
      $(`#seg-${side}-feature`).replaceChildren(...r.features.map((f) => el("option", { value: f, text: f.replace(":", ": ") })));
      $(`#seg-${side}-uattr`).replaceChildren(...(r.user_attributes || []).map((f) => el("option", { value: f, text: f.replace(":", ": ") })));
      // only where the dataset has user attributes (MovieLens: gender, age, occupation)
      $(`#seg-${side}-kind option[value="attr"]`).hidden = !(r.user_attributes || []).length;
    }
  } catch (e) { setStatus($("#seg-status"), e.message, "error", true); }
}

async function compareSegments() {
  const status = $("#seg-status");
  setStatus(status, "comparing…", "loading");
  try {
    const r = await api("/audit/segments", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ a: segGroup("a"), b: segGroup("b"), top: 30 }) });
    const max = Math.max(1e-9, ...r.concepts.flatMap((c) => [c.rate_a, c.rate_b]));
    $("#seg-table tbody").replaceChildren(...r.concepts.map((c) => el("tr", { "data-latent": c.latent },
      el("td", { class: "num" }, el("a", { href: conceptHref(c.latent), text: "#" + c.latent })),
      el("td", { text: c.label || "–" }),
      el("td", { class: "num", "data-value": c.rate_a, text: pct(c.rate_a) }),
      el("td", { class: "num", "data-value": c.rate_b, text: pct(c.rate_b) }),
      el("td", { class: "num", "data-value": c.difference, text: `${c.difference > 0 ? "+" : "−"}${(100 * Math.abs(c.difference)).toFixed(1)} pts` }),
      el("td", { class: "pair" }, el("div", { class: "bar-track" },
        el("div", { class: "bar ref", style: `width:${(100 * c.rate_a / max).toFixed(1)}%` }),
        el("div", { class: "bar live", style: `width:${(100 * c.rate_b / max).toFixed(1)}%` }))))));
    const unknown = [...r.a.unknown, ...r.b.unknown];
    setStatus(status, `A: ${r.a.label}, ${r.a.n} users · B: ${r.b.label}, ${r.b.n} users` +
      (unknown.length ? ` · not in this bundle: ${unknown.join(", ")}` : ""), "ready");
  } catch (e) {
    $("#seg-table tbody").replaceChildren();
    setStatus(status, e.message, "error", true);
  }
}

