// The concept page (/audit/concepts/{id}): everything about one concept, from /audit/concepts/{id}/detail.
"use strict";

// attribute ids in words: "last:genre:Horror" -> "latest item: genre Horror"
function featureText(f) {
  const src = { "last": "latest item", "next": "top recommendation", "user": "user" };
  const parts = f.split(":");
  const where = src[parts[0]] ? src[parts.shift()] + ": " : "in the history: ";
  if (parts[0] === "item") return where + "item " + parts.slice(1).join(":");
  return where + parts.join(" ");
}

async function loadConcept() {
  const latent = Number(location.pathname.split("/").filter(Boolean).pop());
  $("#c-id").textContent = "#" + latent;
  const back = new URLSearchParams(location.search).get("back");
  if (back && back.startsWith("/audit")) $("#back").href = back;
  const status = $("#c-status");
  try {
    const d = await api(`/audit/concepts/${latent}/detail`);
    const c = d.concept;
    document.title = `${d.label || "concept #" + latent} – RecSAE audit`;
    $("#c-label").textContent = d.label || (c.status === "dead" ? "an unused concept" : "an unnamed concept");
    $("#c-description").textContent = c.description || c.reason || "";
    const det = c.detection;
    const conf = $("#c-confidence-text");
    conf.dataset.value = c.confidence === null ? "" : String(c.confidence);
    conf.textContent = c.confidence === null ? "No confidence: " + (c.reason || "the concept was not described.")
      : `${fmt(c.confidence, 2)}: how often the name alone tells samples (a user's history at one point) where it is present from ones where it is absent` +
        (det ? `, checked on ${det.n_positive} + ${det.n_negative} held-out samples (below).` : ".");
    const rows = [];
    if (det) rows.push(["held-out samples where it is present (positives)", det.n_positive, "n-positive"],
                       ["held-out samples where it is absent (negatives)", det.n_negative, "n-negative"],
                       ["balanced accuracy of the name on them", fmt(det.balanced_accuracy, 3), "balanced-accuracy"],
                       ["AUC", fmt(det.auc, 3), "auc"]);
    rows.push(["training samples where it fires", c.evidence.n_activating, "n-activating"]);
    if (c.reason) rows.push(["note", c.reason, "reason"]);
    const samples = (det && det.samples) || [];
    $("#c-samples-box").hidden = !samples.length;
    $("#c-samples").replaceChildren(...samples.map((x) => {
      const right = x.fires === x.predicted > 5;
      return el("tr", { "data-fires": String(x.fires), "data-predicted": String(x.predicted) },
        el("td", { text: x.fires ? "yes" : "no" }), el("td", { class: "num", text: fmt(x.predicted, 1) }),
        el("td", { text: right ? "right" : "wrong", class: right ? "" : "error" }),
        el("td", { text: x.history.join(" → ") + " ⇒ " + (x.recommendation || "–") }));
    }));
    $("#c-evidence").replaceChildren(...rows.map(([k, v, key]) => el("tr", { "data-key": key },
      el("th", { text: k }), el("td", { class: "num", text: String(v) }))));
    const max = Math.max(1e-9, d.reference_rate, d.live_rate || 0);
    $("#c-rates").replaceChildren(
      el("div", { class: "rate-row", id: "c-reference-rate", "data-value": d.reference_rate },
        el("span", { text: "reference" }), el("div", { class: "bar-track" }, el("div", { class: "bar ref", style: `height:100%;width:${(100 * d.reference_rate / max).toFixed(1)}%` })),
        el("span", { class: "num", text: pct(d.reference_rate) })),
      el("div", { class: "rate-row", id: "c-live-rate", "data-value": d.live_rate === null ? "" : d.live_rate },
        el("span", { text: "live" }), el("div", { class: "bar-track" }, el("div", { class: "bar live", style: `height:100%;width:${(100 * (d.live_rate || 0) / max).toFixed(1)}%` })),
        el("span", { class: "num", text: d.live_rate === null ? "no traffic yet" : `${pct(d.live_rate)} of ${d.live_requests} requests` +
          (d.live_requests < d.live_min_requests ? ` (too few to compare: ${d.live_min_requests} needed)` : "") })));
    $("#c-policies").replaceChildren(...(d.policies.length ? d.policies.map((p) => el("li", { "data-policy": p.name, "data-strength": p.strength },
      el("b", { text: p.name }), ` at strength ${p.strength}` + (p.description ? ` — ${p.description}` : "")))
      : [el("li", { class: "muted", text: "none of the stored policies" })]));
    $("#c-users-firing").textContent = `(${d.users_firing} of ${d.users_total} users)`;
    $("#c-users-firing").dataset.value = String(d.users_firing);
    $("#c-histogram").replaceChildren(histogramSvg(d.user_histogram, d.user_histogram_max, "strength", "users"));
    $("#c-top-users").replaceChildren(...d.top_users.map((u) => el("li", { "data-user-id": u.user_id, "data-value": u.activation },
      el("a", { href: `/audit?user=${encodeURIComponent(u.user_id)}`, text: `user ${u.user_id}` }), ` · strength ${fmt(u.activation)}`)));
    const itemRow = (it) => el("li", { "data-item-id": it.item_id, "data-value": it.weight },
      el("span", { text: it.title }), el("span", { class: "muted", text: ` ${it.weight > 0 ? "+" : ""}${fmt(it.weight)}` }));
    $("#c-up").replaceChildren(...d.pushes_up.map(itemRow));
    $("#c-down").replaceChildren(...d.pushes_down.map(itemRow));
    const ex = c.evidence.examples || [];
    $("#c-examples").replaceChildren(...(ex.length ? ex.map((e) => el("li", {},
      el("span", { text: e.history.join(" → ") }), " ⇒ ", el("b", { text: e.recommendation || "–" }),
      el("span", { class: "muted", text: ` · strength ${fmt(e.activation)}` })))
      : [el("li", { class: "muted", text: (c.exemplars || []).length ? "exemplar items: " + c.exemplars.join("; ") : "none recorded" })]));
    $("#c-enriched").replaceChildren(...(c.evidence.enriched || []).slice(0, 12).map((e) => el("tr", { title: e.feature },
      el("td", { text: featureText(e.feature) }), el("td", { class: "num", text: pct(e.share) }),
      el("td", { class: "num", text: pct(e.background) }), el("td", { class: "num", text: `×${fmt(e.lift, 1)}` }))));
    status.dataset.state = "ready";
    status.textContent = `${c.status} · present in ${pct(d.reference_rate)} of reference users`;
  } catch (e) {
    status.dataset.state = "error";
    status.classList.add("error");
    status.textContent = e.message + (e.status === 401 ? " (open /audit and set the token first)" : "");
  }
}

loadConcept();
