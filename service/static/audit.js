// RecSAE audit page: plain JS, no build step. Talks to the service's own API only (helpers: common.js).
"use strict";

const state = { bundle: null, who: null, base: null, current: null, history: null, suppress: new Set(), baseline: 0,
                policy: "", policies: new Map(), seq: 0, hseq: 0, view: "recs" };

// -- state in the URL (share a link, reload, get the same page) ---------------------------------
function syncUrl() {
  const p = new URLSearchParams();
  if (state.who && state.who.kind === "user") p.set("user", state.who.value);
  if (state.who && state.who.kind === "history") p.set("history", state.who.value.join(","));
  if ($("#k").value !== "10") p.set("k", $("#k").value);
  if (state.suppress.size) p.set("suppress", [...state.suppress].sort((a, b) => a - b).join(","));
  const s = suppressStrength();
  if (state.suppress.size && s !== null && s !== 1) p.set("strength", String(s));
  if (state.baseline) p.set("baseline", String(state.baseline));
  if (state.policy) p.set("policy", state.policy);
  if (state.view !== "recs") p.set("view", state.view);
  const qs = p.toString();
  history.replaceState(null, "", location.pathname + (qs ? "?" + qs : ""));
}

function whoFromForm() {
  const kind = document.querySelector('input[name="who"]:checked').value;
  if (kind === "history") {
    const ids = $("#history").value.split(/[\s,]+/).filter(Boolean);
    return { kind, value: ids, label: `history of ${ids.length} items` };
  }
  const id = $("#user-id").value.trim();
  return { kind: "user", value: id, label: `user ${id}` };
}

// strength for the ticked concepts in [0.05, 1]; null (and a message) when the box holds anything else
function suppressStrength() {
  const box = $("#suppress-strength");
  const s = Number(box.value);
  const ok = box.value.trim() !== "" && s >= 0.05 && s <= 1;
  box.setAttribute("aria-invalid", ok ? "false" : "true");
  return ok ? s : null;
}

function fetchRecs(suppress, baseline, strength, policy = "") {
  const k = Number($("#k").value);
  const who = state.who;
  if (who.kind === "user") {
    const p = new URLSearchParams({ user_id: who.value, k: String(k), explain: "true" });
    if (suppress.length) p.set("suppress", suppress.join(","));
    if (suppress.length && strength !== 1) p.set("suppress_strength", String(strength));
    if (baseline) p.set("suppress_baseline", String(baseline));
    if (policy) p.set("policy", policy);
    return api("/recommend?" + p.toString());
  }
  return api("/recommend", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ history: who.value, k, explain: true, suppress, suppress_strength: strength,
                           suppress_baseline: baseline, policy: policy || null }),
  });
}

function fetchHistory() {
  const who = state.who;
  if (who.kind === "user") return api("/audit/history?" + new URLSearchParams({ user_id: who.value }).toString());
  return api("/audit/history", { method: "POST", headers: { "content-type": "application/json" },
                                 body: JSON.stringify({ history: who.value }) });
}

// "after removing #12, #57; with policy no-popularity applied"
function changeText(suppress, baseline, strength, policy) {
  const removed = [suppress.length ? suppress.map((j) => "#" + j).join(", ") + (strength !== 1 ? ` at ${strength}` : "") : null,
                   baseline ? `the shared baseline at ${baseline}` : null].filter(Boolean).join(" and ");
  return [removed ? `after removing ${removed}` : null, policy ? `with policy ${policy} applied` : null].filter(Boolean).join("; ");
}

// the stored policies (read-only with the audit token) for the picker
async function loadPolicies() {
  const select = $("#policy");
  try {
    const r = await api("/audit/policies");
    state.policies = new Map(r.policies.map((p) => [p.name, p]));
    select.replaceChildren(el("option", { value: "", text: "none" }),
      ...r.policies.map((p) => el("option", { value: p.name, text: p.name, title: p.description || "" })));
    if (state.policy && !state.policies.has(state.policy)) select.append(el("option", { value: state.policy, text: state.policy + " (not found)" }));
    select.value = state.policy;
    select.dataset.state = "ready";
  } catch (e) {
    select.dataset.state = "error";
    select.title = e.message;
  }
  showPolicy();
}

function policySummary(p) {
  const parts = [];
  if (p.latents && p.latents.length) {
    const own = Object.entries(p.strengths || {}).map(([j, s]) => `#${j} at ${s}`);
    parts.push(`${p.latents.length} concept${p.latents.length > 1 ? "s" : ""} at ${p.strength}` + (own.length ? ` (${own.join(", ")})` : ""));
  }
  if (p.baseline) parts.push(`baseline ${p.baseline}`);
  return parts.join(" + ") + (p.description ? ` — ${p.description}` : "");
}

function showPolicy() {
  const p = state.policies.get(state.policy);
  $("#policy-desc").textContent = p ? policySummary(p) : "";
}

function choosePolicy() {
  state.policy = $("#policy").value;
  showPolicy();
  return rerank();
}

// load a user (or history); keep=true keeps the ticked concepts and baseline (k changed, shared link)
async function load(who, keep = false) {
  state.who = who;
  if (!keep) {
    state.suppress.clear();
    state.baseline = 0;
    $("#baseline-toggle").checked = false;
  }
  syncUrl();
  const seq = ++state.seq;
  const status = $("#rec-status");
  setStatus(status, "loading…", "loading");
  loadHistory(who);
  try {
    const base = await fetchRecs([], 0);
    if (seq !== state.seq) return;
    state.base = state.current = base;
    $("#export-json").disabled = $("#export-csv").disabled = false;
    if (state.policy || state.suppress.size || state.baseline) return rerank();
    syncUrl();  // first: the concept links carry the page's address back
    render();
    status.dataset.suppress = "";
    status.dataset.baseline = "0";
    status.dataset.policy = "";
    setStatus(status, `${who.label}: ${base.items.length} items, ${base.active_latents.length} active concepts`, "ready");
  } catch (e) {
    if (seq !== state.seq) return;
    state.base = state.current = null;
    render();
    setStatus(status, e.message, "error", true);
  }
}

async function loadHistory(who) {
  const seq = ++state.hseq;
  const status = $("#history-status");
  state.history = null;
  $("#history-list").replaceChildren();
  setStatus(status, "loading…", "loading");
  try {
    const h = await fetchHistory();
    if (seq !== state.hseq) return;
    state.history = h;
    renderHistory();
    renderBars();
    const how = h.method === "leave-one-out"
      ? `${h.items.length} items; the model reads the newest ${h.window}. Drivers: each item removed in turn (${(1000 * h.seconds).toFixed(0)} ms)`
      : `${h.items.length} items. This model's user vector is learned, not computed from the history, so items are credited by how their embedding aligns with each concept (not a cause)`;
    setStatus(status, how, "ready");
  } catch (e) {
    if (seq !== state.hseq) return;
    setStatus(status, e.message, "error", true);
  }
}

function toggle(latent, on) {
  if (on) state.suppress.add(latent); else state.suppress.delete(latent);
  return rerank();
}

function toggleBaseline() {
  const s = Number($("#baseline-strength").value);
  state.baseline = $("#baseline-toggle").checked && s > 0 && s <= 1 ? s : 0;
  return rerank();
}

async function rerank() {
  if (!state.base) return;
  const suppress = [...state.suppress].sort((a, b) => a - b);
  const baseline = state.baseline;
  const strength = suppressStrength();
  const status = $("#rec-status");
  if (strength === null) {
    status.dataset.strength = "invalid";
    setStatus(status, `strength "${$("#suppress-strength").value}" is not between 0.05 and 1: type a value in that range (1 removes all of a concept)`, "error", true);
    return;
  }
  const policy = state.policy;
  const any = suppress.length || baseline || policy;
  const seq = ++state.seq;
  setStatus(status, "re-ranking…", "loading");
  try {
    const cur = any ? await fetchRecs(suppress, baseline, strength, policy) : state.base;
    if (seq !== state.seq) return;
    state.current = cur;
    syncUrl();
    render();
    status.dataset.suppress = suppress.join(",");
    status.dataset.baseline = String(baseline);
    status.dataset.strength = String(strength);
    status.dataset.policy = policy;
    let text = any ? changeText(suppress, baseline, strength, policy) : "nothing removed";
    if (policy) {
      const hits = (cur.suppressed || []).filter((x) => x.source === "policy:" + policy && x.active).length;
      const pb = cur.baseline && cur.baseline.source === "policy:" + policy;
      if (!hits && !pb) text += ` — policy ${policy} touches none of this user's active concepts, so it changes nothing here`;
      status.dataset.policyHits = String(hits);
    }
    setStatus(status, text, "ready");
  } catch (e) {
    if (seq !== state.seq) return;
    if (policy && policy === state.policy && refusedPolicy(e)) return policyGone(policy);
    status.dataset.suppress = suppress.join(",");
    status.dataset.baseline = String(baseline);
    status.dataset.policy = policy;
    setStatus(status, e.message, "error", true);
  }
}

// a 422 naming the policy: it was deleted (or renamed) since the page listed it
function refusedPolicy(e) {
  const d = e.body && e.body.detail;
  return e.status === 422 && Array.isArray(d) && d.some((x) => Array.isArray(x.loc) && x.loc[x.loc.length - 1] === "policy");
}

// drop the gone policy: re-read the stored ones, answer without it, and say so
async function policyGone(name) {
  state.policy = "";
  await loadPolicies();
  await rerank();
  const status = $("#rec-status");
  if (status.dataset.state === "ready")
    setStatus(status, `policy ${name} no longer exists (deleted since this page listed it), so it is no longer applied: ${status.textContent}`, "ready");
}

// -- rendering ------------------------------------------------------------------------------------
const conceptHref = (j) => `/audit/concepts/${j}?back=${encodeURIComponent(location.pathname + location.search)}`;

// a concept's short name, with its id when another active concept has the same one
function nameOf(j, description) {
  const name = shortLabel(description);
  if (!name) return null;
  const same = state.base ? state.base.active_latents.filter((a) => shortLabel(a.description) === name).length : 0;
  return same > 1 ? `${name} (#${j})` : name;
}

function conceptOf(j) {
  const a = state.base && state.base.active_latents.find((x) => x.latent === j);
  return a || {};
}

function render() {
  renderBars();
  renderList();
}

function renderHistory() {
  const h = state.history;
  if (!h) return;
  $("#history-list").replaceChildren(...h.items.map((it) => el("li", {
      "data-item-id": it.item_id, "data-position": it.position, class: it.in_window ? null : "outside",
      title: it.in_window ? null : "older than what the model reads: it cannot drive anything" },
    el("span", { class: "marker", "aria-hidden": "true" }), el("span", { text: it.title }),
    el("span", { class: "attr muted" }), it.in_window ? null : el("span", { class: "muted", text: " (not read)" }))));
}

function driversOf(j) {
  const c = state.history && state.history.concepts.find((x) => x.latent === j);
  return c ? c.top : [];
}

function renderBars() {
  const bars = $("#concept-bars");
  bars.replaceChildren();
  const base = state.base, cur = state.current;
  const policyBaseline = cur && cur.baseline && cur.baseline.source.startsWith("policy:") ? cur.baseline.strength : 0;
  $("#baseline-row").classList.toggle("suppressed", state.baseline > 0 || policyBaseline > 0);
  $("#baseline-row").classList.toggle("by-policy", policyBaseline > 0);
  $("#baseline-row").dataset.policyStrength = String(policyBaseline);
  if (!base) return;
  const byPolicy = new Map((cur.suppressed || []).filter((x) => x.source.startsWith("policy:")).map((x) => [x.latent, x]));
  const active = [...base.active_latents].sort((a, b) => b.activation - a.activation);
  const max = Math.max(1e-9, ...active.map((a) => a.activation));
  for (const a of active) {
    const pol = byPolicy.get(a.latent);
    const off = state.suppress.has(a.latent) || !!pol;
    const name = nameOf(a.latent, a.description) || "unnamed concept";
    const tip = `${a.description || "no description"}\nconfidence ${fmt(a.confidence, 2)} · strength ${fmt(a.activation)}` +
      (pol ? `\nremoved by policy ${pol.source.slice(7)} at strength ${pol.strength}` : "");
    const drivers = driversOf(a.latent);
    bars.append(el("div", { class: "bar-row" + (off ? " suppressed" : "") + (pol ? " by-policy" : ""), "data-latent": a.latent,
                            onmouseenter: () => highlight(a.latent), onmouseleave: () => highlight(null),
                            onfocusin: () => highlight(a.latent), onfocusout: () => highlight(null) },
      el("input", { type: "checkbox", class: "suppress-toggle", "data-latent": a.latent, checked: state.suppress.has(a.latent),
        "aria-label": `remove concept ${name} (#${a.latent})`, onchange: (ev) => toggle(a.latent, ev.target.checked) }),
      el("a", { class: "cid", href: conceptHref(a.latent), title: "open the concept's page", text: "#" + a.latent }),
      el("div", {},
        el("div", { class: "desc", title: tip, text: (pol ? "[policy] " : "") + (off ? "removed: " : "") + name }),
        el("div", { class: "bar-track" }, el("div", { class: "bar", style: `width:${(100 * a.activation / max).toFixed(1)}%` })),
        drivers.length ? el("div", { class: "drivers muted", text: "from: " + drivers.slice(0, 3).map((d) => d.title).join(", ") }) : null),
      el("span", { class: "muted", title: tip, text: `${fmt(a.activation, 2)} · conf ${fmt(a.confidence, 2)}` })));
  }
}

// an item's score in parts: the concepts shown, the other concepts, the shared baseline, the rest
function parts(it, shown) {
  const ex = it.explanation || { contributions: [], bias: 0, error: 0 };
  const shownSet = new Set(shown.map((c) => c.latent));
  const other = ex.contributions.filter((c) => !shownSet.has(c.latent)).reduce((s, c) => s + c.contribution, 0);
  return { other, baseline: ex.bias, rest: ex.error };
}

function renderList() {
  const list = $("#rec-list");
  list.replaceChildren();
  $("#left-list").replaceChildren(); $("#entered-list").replaceChildren();
  $("#diff").hidden = true;
  $("#supp-label").textContent = "";
  const base = state.base, cur = state.current;
  if (!base) return;
  const baseRank = new Map(base.items.map((i) => [i.item_id, i.rank]));
  const curIds = new Set(cur.items.map((i) => i.item_id));
  for (const it of cur.items) {
    const contribs = ((it.explanation && it.explanation.contributions) || []).filter((c) => c.contribution !== 0);
    const shown = contribs.filter((c) => !c.suppressed).slice(0, 4);
    const chips = shown.map((c) => {
      const a = conceptOf(c.latent);
      const label = nameOf(c.latent, a.description || c.label) || `concept #${c.latent}`;
      const sign = c.contribution > 0 ? "+" : "−";
      return el("a", { class: "chip" + (c.contribution < 0 ? " neg" : ""), href: conceptHref(c.latent), "data-latent": c.latent,
        "data-contribution": c.contribution,
        title: `#${c.latent} ${a.description || label}\nconfidence ${fmt(a.confidence, 2)}\nshare of the score ${sign}${fmt(Math.abs(c.contribution), 3)}`,
        onmouseenter: () => highlight(c.latent), onmouseleave: () => highlight(null),
        onfocus: () => highlight(c.latent), onblur: () => highlight(null) },
        el("span", { class: "sign", "aria-label": c.contribution > 0 ? "raises" : "lowers", text: c.contribution > 0 ? "▲ " : "▼ " }), label);
    });
    const p = parts(it, shown);
    const rest = el("div", { class: "remainder muted", "data-other": p.other, "data-baseline": p.baseline, "data-rest": p.rest,
        title: "the rest of the score: concepts not shown above, what every user shares, and what the concepts do not capture" },
      `other concepts ${fmt(p.other, 2)} · shared baseline ${fmt(p.baseline, 2)} · not captured by concepts ${fmt(p.rest, 2)}`);
    const was = baseRank.get(it.item_id);
    const moved = was === undefined ? el("span", { class: "moved new", text: " · new" })
      : was !== it.rank ? el("span", { class: "moved", "data-was": was, text: ` · ${was > it.rank ? "↑" : "↓"}${Math.abs(was - it.rank)} (was #${was})` }) : null;
    list.append(el("li", { "data-item-id": it.item_id, class: was === undefined ? "entered" : null },
      el("span", { class: "item-title", text: it.title }), " ",
      el("span", { class: "muted", text: `id ${it.item_id} · score ${fmt(it.score)}` }), moved,
      el("div", {}, chips), rest));
  }
  const suppress = [...state.suppress].sort((a, b) => a - b);
  if (suppress.length || state.baseline || state.policy) {
    $("#supp-label").textContent = changeText(suppress, state.baseline, suppressStrength() || 1, state.policy);
    $("#diff").hidden = false;
    for (const it of base.items) if (!curIds.has(it.item_id))
      $("#left-list").append(el("li", { "data-item-id": it.item_id, text: `${it.title} (id ${it.item_id}, was #${it.rank})` }));
    for (const it of cur.items) if (!baseRank.has(it.item_id))
      $("#entered-list").append(el("li", { "data-item-id": it.item_id, text: `${it.title} (id ${it.item_id}, now #${it.rank})` }));
    if (!$("#left-list").children.length) $("#left-list").append(el("li", { class: "muted", text: "none (order may change)" }));
    if (!$("#entered-list").children.length) $("#entered-list").append(el("li", { class: "muted", text: "none" }));
  }
}

// point at a concept: its items in the history, its chips in the list, its bar
function highlight(j) {
  for (const n of document.querySelectorAll(".hl")) n.classList.remove("hl");
  for (const n of document.querySelectorAll("#history-list .attr")) n.textContent = "";
  for (const n of document.querySelectorAll("#history-list .marker")) n.textContent = "";
  $("#history-list").dataset.latent = j === null ? "" : String(j);
  if (j === null) return;
  for (const n of document.querySelectorAll(`#rec-list .chip[data-latent="${j}"], #concept-bars .bar-row[data-latent="${j}"]`)) n.classList.add("hl");
  const c = state.history && state.history.concepts.find((x) => x.latent === j);
  if (!c) return;
  for (const t of c.top) {
    const li = document.querySelector(`#history-list li[data-position="${t.position}"]`);
    if (!li) continue;
    li.classList.add("hl");
    li.querySelector(".marker").textContent = "▶ ";
    li.querySelector(".attr").textContent = ` +${fmt(t.attribution, 3)}`;
  }
}

// -- concept dictionary and drift --------------------------------------------------------------
let dictTimer = null;
async function loadDict() {
  const status = $("#dict-status");
  const p = new URLSearchParams({ sort: $("#dict-sort").value, limit: "100" });
  const q = $("#dict-q").value.trim();
  if (q) p.set("q", q);
  setStatus(status, "searching…", "loading");
  try {
    const r = await api("/concepts?" + p.toString());
    const maxF = Math.max(1e-9, ...r.concepts.map((c) => c.firing_frequency));
    $("#dict-table tbody").replaceChildren(...r.concepts.map((c) => el("tr", { "data-latent": c.latent },
      el("td", { class: "num" }, el("a", { href: conceptHref(c.latent), text: "#" + c.latent })),
      el("td", { text: c.status }),
      el("td", { title: c.description || "" }, shortLabel(c.description) || "–",
        (c.exemplars || []).length ? el("div", { class: "muted exemplars", text: "e.g. " + c.exemplars.slice(0, 3).join("; ") }) : null),
      el("td", { class: "num", text: fmt(c.confidence, 2) }),
      el("td", { class: "num" + (c.n_positive !== null && c.n_positive < 20 ? " few" : ""), "data-n": c.n_positive,
        text: c.n_positive === null ? "–" : `${c.n_positive} / ${c.n_negative}` + (c.n_positive < 20 ? " (few)" : "") }),
      el("td", {}, el("span", { class: "mini-track" }, el("span", { class: "bar", style: `display:block;width:${(100 * c.firing_frequency / maxF).toFixed(1)}%` })),
        " " + pct(c.firing_frequency)))));
    setStatus(status, `${r.total} match${r.total === 1 ? "" : "es"}${r.total > r.concepts.length ? `, first ${r.concepts.length} shown` : ""}`, "ready");
  } catch (e) {
    setStatus(status, e.message, "error", true);
  }
}

async function loadDrift() {
  const summary = $("#drift-summary");
  setStatus(summary, "loading…", "loading");
  try {
    const d = await api("/drift?top=15&sort=" + $("#drift-sort").value);
    const max = Math.max(1e-9, ...d.latents.flatMap((l) => [l.reference_rate, l.live_rate]));
    const v = $("#drift-verdict");
    v.dataset.verdict = d.verdict;
    v.replaceChildren(el("b", { text: { "not-enough-traffic": "No verdict yet", stable: "✓ Stable", watch: "! Watch", drifting: "✗ Drifting" }[d.verdict] }),
      ": " + d.verdict_text);
    $("#drift-table tbody").replaceChildren(...d.latents.map((l) => el("tr", { "data-latent": l.latent },
      el("td", { class: "num" }, el("a", { href: conceptHref(l.latent), text: "#" + l.latent })),
      el("td", { text: shortLabel(l.description) || "–", title: l.description || "" }),
      el("td", { class: "pair", title: `reference ${pct(l.reference_rate)} · live ${pct(l.live_rate)} · PSI term ${fmt(l.psi_term, 4)}` },
        el("div", { class: "bar-track" },
          el("div", { class: "bar ref", style: `width:${(100 * l.reference_rate / max).toFixed(1)}%` }),
          el("div", { class: "bar live", style: `width:${(100 * l.live_rate / max).toFixed(1)}%` })),
        el("small", { class: "muted", text: `${pct(l.reference_rate)} → ${pct(l.live_rate)}` })),
      el("td", { class: "num", title: "mean strength when present: reference → live",
        text: `${fmt(l.reference_mean_activation, 2)} → ${fmt(l.live_mean_activation, 2)}` }))));
    setStatus(summary, d.jsd === null ? `no live traffic yet in this worker's window (${d.window_size} requests)`
      : `JSD ${fmt(d.jsd, 4)} · PSI ${fmt(d.psi, 3)} over the last ${d.window_requests} requests of this worker (upper bar: reference, lower bar: live)`, "ready");
  } catch (e) {
    $("#drift-table tbody").replaceChildren();
    setStatus(summary, e.message, "error", true);
  }
}

// -- recent traffic ------------------------------------------------------------------------------
function idList(ids, n = 8) {
  const shown = ids.slice(0, n).map((j) => "#" + j).join(", ");
  return ids.length > n ? `${shown} +${ids.length - n} more` : shown;
}

async function loadRecent() {
  const status = $("#recent-status");
  setStatus(status, "loading…", "loading");
  try {
    const r = await api("/audit/recent?limit=50");
    $("#recent-table tbody").replaceChildren(...r.entries.map((e) => el("tr", { "data-id": e.id },
      el("td", { text: new Date(e.ts * 1000).toLocaleTimeString() }),
      el("td", {}, e.user_id === null ? el("span", { class: "muted", text: "history" })
        : el("a", { class: "user", href: "?user=" + encodeURIComponent(e.user_id), text: e.user_id,
                    onclick: (ev) => { ev.preventDefault(); openUser(e.user_id); } })),
      el("td", { class: "ids", title: e.suppressed.map((j) => "#" + j).join(", "),
                 text: [e.suppressed.length ? idList(e.suppressed) : "", e.baseline ? "baseline " + e.baseline : "", e.policy ? "policy " + e.policy : ""].filter(Boolean).join(" · ") || "–" }),
      el("td", { text: e.items.slice(0, 5).map((i) => i.title).join(" · ") }),
      el("td", { class: "muted ids", text: idList(e.active) }))));
    setStatus(status, `${r.entries.length} sampled answers, newest first`, "ready");
  } catch (e) {
    $("#recent-table tbody").replaceChildren();
    setStatus(status, e.message, "error", true);
  }
}

function openUser(id, keep = false) {
  document.querySelector('input[name="who"][value="user"]').checked = true;
  syncWho();
  $("#user-id").value = id;
  show("recs");
  load(whoFromForm(), keep);
}

// -- history mode: add items by title ------------------------------------------------------------
let titleTimer = null;
async function searchTitles() {
  const q = $("#title-search").value.trim();
  const box = $("#title-results");
  if (!q) { box.replaceChildren(); return; }
  try {
    const r = await api("/audit/items?" + new URLSearchParams({ q, limit: "8" }).toString());
    box.dataset.state = "ready";
    box.replaceChildren(...(r.items.length ? r.items.map((it) => el("button", { type: "button", class: "title-hit", role: "option",
      "data-item-id": it.item_id, text: `+ ${it.title}`, onclick: () => {
        const t = $("#history");
        t.value = (t.value.trim() + " " + it.item_id).trim();
        $("#title-search").value = "";
        box.replaceChildren();
        $("#title-search").focus();
      } })) : [el("span", { class: "muted", text: "no title matches" })]));
  } catch (e) {
    box.replaceChildren(el("span", { class: "error", text: e.message }));
  }
}

// -- wiring --------------------------------------------------------------------------------------
function show(view) {
  state.view = view;
  for (const t of document.querySelectorAll(".tab")) {
    t.classList.toggle("active", t.dataset.view === view);
    t.setAttribute("aria-selected", t.dataset.view === view ? "true" : "false");
  }
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "view-" + view;
  if (view === "dict") { loadDict(); loadDrift(); }
  if (view === "recent") loadRecent();
  if (view === "segments") loadFeatures();
  syncUrl();
}

function syncWho() {
  const hist = document.querySelector('input[name="who"]:checked').value === "history";
  $("#history").hidden = !hist;
  $("#title-search-box").hidden = !hist;
  $("#user-id").hidden = hist;
}

// a shared link: user or history, k, ticked concepts, strength, baseline, policy, view
function applyUrl() {
  const p = new URLSearchParams(location.search);
  if (["5", "10", "20"].includes(p.get("k"))) $("#k").value = p.get("k");
  for (const j of (p.get("suppress") || "").split(",").filter((x) => /^\d+$/.test(x))) state.suppress.add(Number(j));
  if (p.get("strength")) $("#suppress-strength").value = p.get("strength");
  const b = Number(p.get("baseline"));
  if (b > 0 && b <= 1) { state.baseline = b; $("#baseline-toggle").checked = true; $("#baseline-strength").value = String(b); }
  state.policy = p.get("policy") || "";
  const user = p.get("user") || p.get("user_id");
  if (p.get("view") && p.get("view") !== "recs") show(p.get("view"));
  if (user) return openUser(user, true);
  if (p.get("history")) {
    document.querySelector('input[name="who"][value="history"]').checked = true;
    syncWho();
    $("#history").value = p.get("history").split(",").join(" ");
    load(whoFromForm(), true);
  }
}

function init() {
  for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => show(t.dataset.view));
  for (const r of document.querySelectorAll('input[name="who"]')) r.addEventListener("change", syncWho);
  $("#who-form").addEventListener("submit", (ev) => { ev.preventDefault(); load(whoFromForm()); });
  $("#k").addEventListener("change", () => { if (state.who) load(state.who, true); else syncUrl(); });
  $("#baseline-toggle").addEventListener("change", toggleBaseline);
  $("#baseline-strength").addEventListener("change", () => { if ($("#baseline-toggle").checked) toggleBaseline(); });
  $("#suppress-strength").addEventListener("change", () => { if (state.suppress.size) rerank(); else suppressStrength(); });
  $("#policy").addEventListener("change", choosePolicy);
  $("#title-search").addEventListener("input", () => { clearTimeout(titleTimer); titleTimer = setTimeout(searchTitles, 200); });
  $("#export-json").addEventListener("click", () => download(exportJson(), "application/json", "recsae-audit.json"));
  $("#export-csv").addEventListener("click", () => download(exportCsv(), "text/csv", "recsae-audit.csv"));
  $("#copy-link").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(location.href); $("#copy-link").textContent = "Link copied"; }
    catch (e) { $("#copy-link").textContent = "Copy the address bar"; }
  });
  $("#token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("#token").value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
    $("#token").value = "";
    $("#token-state").textContent = t ? "token set (this tab only)" : "no token";
    if (state.view !== "recs") show(state.view);
    if (state.who) loadHistory(state.who);
    loadPolicies();
  });
  $("#token-state").textContent = token() ? "token set (this tab only)" : "no token";
  $("#dict-q").addEventListener("input", () => { clearTimeout(dictTimer); dictTimer = setTimeout(loadDict, 250); });
  $("#dict-form").addEventListener("submit", (ev) => { ev.preventDefault(); loadDict(); });
  $("#dict-sort").addEventListener("change", loadDict);
  $("#drift-refresh").addEventListener("click", loadDrift);
  $("#drift-sort").addEventListener("change", loadDrift);
  $("#recent-refresh").addEventListener("click", loadRecent);
  $("#seg-form").addEventListener("submit", (ev) => { ev.preventDefault(); compareSegments(); });
  $("#seg-a-kind").addEventListener("change", syncSeg);
  $("#seg-b-kind").addEventListener("change", syncSeg);
  api("/bundle").then((b) => {
    state.bundle = b;
    const keeps = b.metrics && b.metrics.sae_heldout_ndcg10_ratio;
    $("#bundle-info").textContent = `bundle ${b.version} · ${b.model.name} · ${b.sae.n_latents} concepts, ${b.sae.k} per user` +
      (b.sae.encoder && b.sae.encoder !== "topk" ? ` (${b.sae.encoder} encoder)` : "") +
      (typeof keeps === "number" ? ` · concepts alone keep ${(100 * keeps).toFixed(1)}% of NDCG@10` : "");
    $("#bundle-info").title = "ranking quality (NDCG@10) when the concepts' reconstruction replaces the model's own user vector, " +
      "over held-out users, relative to the model: how much of the ranking the concepts capture";
    const warnings = b.quality_warnings || [];
    $("#bundle-warning").hidden = warnings.length === 0;
    $("#bundle-warning").textContent = warnings.length ? `⚠ ${warnings.length} quality warning${warnings.length > 1 ? "s" : ""}` : "";
    $("#bundle-warning").title = warnings.join("\n");
    if (!b.accepts_history) $("#history-choice").hidden = true;
  }).catch((e) => { $("#bundle-info").textContent = e.message; });
  loadPolicies();
  applyUrl();
}

init();
