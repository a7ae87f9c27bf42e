// RecSAE audit page: plain JS, no build step. Talks to the service's own API only.
"use strict";

const $ = (s) => document.querySelector(s);
const TOKEN_KEY = "recsae-audit-token";
const state = { bundle: null, who: null, base: null, current: null, suppress: new Set(), baseline: 0, policy: "",
                policies: new Map(), seq: 0 };

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

// -- API ----------------------------------------------------------------------------------------
function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function detailText(body) {
  if (body && typeof body === "object" && "detail" in body) {
    const d = body.detail;
    return Array.isArray(d) ? d.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ") : String(d);
  }
  return String(body).slice(0, 300);
}

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  const r = await fetch(path, Object.assign({}, opts, { headers }));
  const json = (r.headers.get("content-type") || "").includes("json");
  const body = json ? await r.json() : await r.text();
  if (!r.ok) {
    const err = new Error(r.status === 401 ? "401: audit token missing or wrong — enter it at the top right" : `${r.status}: ${detailText(body)}`);
    err.status = r.status;
    throw err;
  }
  return body;
}

function setStatus(node, text, stateName, isError) {
  node.textContent = text;
  node.classList.toggle("error", !!isError);
  if (stateName) node.dataset.state = stateName;
}

// -- recommendations view -----------------------------------------------------------------------
function whoFromForm() {
  const kind = document.querySelector('input[name="who"]:checked').value;
  if (kind === "history") {
    const ids = $("#history").value.split(/[\s,]+/).filter(Boolean);
    return { kind, value: ids, label: `history of ${ids.length} items` };
  }
  const id = $("#user-id").value.trim();
  return { kind: "user", value: id, label: `user ${id}` };
}

// strength for the ticked concepts, in (0, 1]; 1 (all of each contribution) when the box is not a number in range
function suppressStrength() {
  const s = Number($("#suppress-strength").value);
  return s > 0 && s <= 1 ? s : 1;
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

// what is suppressed, in words: "#12, #57 at 0.6, baseline 0.4, policy no-popularity"
function suppressionText(suppress, baseline, strength = 1, policy = "") {
  const latents = suppress.length ? suppress.map((j) => "#" + j).join(", ") + (strength !== 1 ? ` at ${strength}` : "") : null;
  return [latents, baseline ? `baseline ${baseline}` : null, policy ? `policy ${policy}` : null].filter(Boolean).join(", ");
}

// the stored policies (read-only with the audit token) for the picker; the choice survives a reload
async function loadPolicies() {
  const select = $("#policy");
  try {
    const r = await api("/audit/policies");
    state.policies = new Map(r.policies.map((p) => [p.name, p]));
    select.replaceChildren(el("option", { value: "", text: "none" }),
      ...r.policies.map((p) => el("option", { value: p.name, text: p.name, title: p.description || "" })));
    if (!state.policies.has(state.policy)) state.policy = "";
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

async function load(who) {
  state.who = who;
  state.suppress.clear();
  state.baseline = 0;
  $("#baseline-toggle").checked = false;
  const seq = ++state.seq;
  const status = $("#rec-status");
  setStatus(status, "loading…", "loading");
  try {
    const base = await fetchRecs([], 0);
    if (seq !== state.seq) return;
    state.base = state.current = base;
    if (state.policy) return rerank();  // the chosen policy stays on for the next user
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

function toggle(latent, on) {
  if (on) state.suppress.add(latent); else state.suppress.delete(latent);
  return rerank();
}

// the baseline toggle: suppress the SAE decoder bias (what all users share) at the chosen strength
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
  const policy = state.policy;
  const any = suppress.length || baseline || policy;
  const seq = ++state.seq;
  const status = $("#rec-status");
  setStatus(status, "re-ranking…", "loading");
  try {
    const cur = any ? await fetchRecs(suppress, baseline, strength, policy) : state.base;
    if (seq !== state.seq) return;
    state.current = cur;
    render();
    status.dataset.suppress = suppress.join(",");
    status.dataset.baseline = String(baseline);
    status.dataset.strength = String(strength);
    status.dataset.policy = policy;
    setStatus(status, any ? `suppressed ${suppressionText(suppress, baseline, strength, policy)}` : "no suppression", "ready");
  } catch (e) {
    if (seq !== state.seq) return;
    status.dataset.suppress = suppress.join(",");
    status.dataset.baseline = String(baseline);
    status.dataset.policy = policy;
    setStatus(status, e.message, "error", true);
  }
}

function conceptName(a) { return a && a.description ? a.description : null; }

function render() {
  const bars = $("#concept-bars"), list = $("#rec-list");
  bars.replaceChildren(); list.replaceChildren();
  $("#left-list").replaceChildren(); $("#entered-list").replaceChildren();
  $("#diff").hidden = true;
  $("#supp-label").textContent = "";
  const base = state.base, cur = state.current;
  const policyBaseline = cur && cur.baseline && cur.baseline.source.startsWith("policy:") ? cur.baseline.strength : 0;
  $("#baseline-row").classList.toggle("suppressed", state.baseline > 0 || policyBaseline > 0);
  $("#baseline-row").classList.toggle("by-policy", policyBaseline > 0);
  $("#baseline-row").dataset.policyStrength = String(policyBaseline);
  if (!base) return;
  const byLatent = new Map(base.active_latents.map((a) => [a.latent, a]));
  const byPolicy = new Map((cur.suppressed || []).filter((x) => x.source.startsWith("policy:")).map((x) => [x.latent, x]));
  // active concepts as a bar chart, strongest first, each with a suppression toggle
  const active = [...base.active_latents].sort((a, b) => b.activation - a.activation);
  const max = Math.max(1e-9, ...active.map((a) => a.activation));
  for (const a of active) {
    const pol = byPolicy.get(a.latent);
    const off = state.suppress.has(a.latent) || !!pol;
    const label = (pol ? `[policy, strength ${pol.strength}] ` : "") + (conceptName(a) || "(no description)");
    bars.append(el("div", { class: "bar-row" + (off ? " suppressed" : "") + (pol ? " by-policy" : ""), "data-latent": a.latent },
      el("input", { type: "checkbox", class: "suppress-toggle", "data-latent": a.latent, checked: state.suppress.has(a.latent),
        title: `suppress concept #${a.latent}`, onchange: (ev) => toggle(a.latent, ev.target.checked) }),
      el("span", { class: "muted", text: "#" + a.latent }),
      el("div", {},
        el("div", { class: "desc", title: label, text: label }),
        el("div", { class: "bar-track" }, el("div", { class: "bar", style: `width:${(100 * a.activation / max).toFixed(1)}%` }))),
      el("span", { class: "muted", text: `act ${fmt(a.activation)} · conf ${fmt(a.confidence, 2)}` })));
  }
  // the (possibly re-ranked) list, with per-item concept chips
  const baseIds = new Set(base.items.map((i) => i.item_id));
  const curIds = new Set(cur.items.map((i) => i.item_id));
  for (const it of cur.items) {
    const chips = ((it.explanation && it.explanation.contributions) || [])
      .filter((c) => !c.suppressed && c.contribution !== 0).slice(0, 4)
      .map((c) => {
        const a = byLatent.get(c.latent) || {};
        const name = a.description || c.label || `latent #${c.latent}`;
        const short = (c.label || name).split(" — ")[0].split(";")[0];
        return el("span", { class: "chip" + (c.contribution < 0 ? " neg" : ""), "data-latent": c.latent,
          title: `#${c.latent} ${name}\nconfidence ${fmt(a.confidence, 2)}\ncontribution ${fmt(c.contribution, 4)}`,
          text: `${short} · conf ${fmt(a.confidence, 2)} · ${c.contribution > 0 ? "+" : ""}${fmt(c.contribution)}` });
      });
    list.append(el("li", { "data-item-id": it.item_id, class: baseIds.has(it.item_id) ? null : "entered" },
      el("span", { class: "item-title", text: it.title }), " ",
      el("span", { class: "muted", text: `id ${it.item_id} · score ${fmt(it.score)}` + (baseIds.has(it.item_id) ? "" : " · new") }),
      el("div", {}, chips)));
  }
  if (state.suppress.size || state.baseline || state.policy) {
    $("#supp-label").textContent = `with ${suppressionText([...state.suppress], state.baseline, suppressStrength(), state.policy)} suppressed`;
    $("#diff").hidden = false;
    for (const it of base.items) if (!curIds.has(it.item_id))
      $("#left-list").append(el("li", { "data-item-id": it.item_id, text: `${it.title} (id ${it.item_id}, was #${it.rank})` }));
    for (const it of cur.items) if (!baseIds.has(it.item_id))
      $("#entered-list").append(el("li", { "data-item-id": it.item_id, text: `${it.title} (id ${it.item_id}, now #${it.rank})` }));
    if (!$("#left-list").children.length) $("#left-list").append(el("li", { class: "muted", text: "none (order may change)" }));
    if (!$("#entered-list").children.length) $("#entered-list").append(el("li", { class: "muted", text: "none" }));
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
      el("td", { class: "num", text: "#" + c.latent }),
      el("td", { text: c.status }),
      el("td", { title: (c.attributes || []).join(", ") }, c.description || "–",
        (c.exemplars || []).length ? el("div", { class: "muted exemplars", text: "exemplars: " + c.exemplars.join("; ") }) : null),
      el("td", { class: "num", text: fmt(c.confidence, 2) }),
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
    $("#drift-table tbody").replaceChildren(...d.latents.map((l) => el("tr", { "data-latent": l.latent },
      el("td", { class: "num", text: "#" + l.latent }),
      el("td", { text: l.description || "–" }),
      el("td", { class: "pair", title: `reference ${pct(l.reference_rate)} · live ${pct(l.live_rate)} · PSI term ${fmt(l.psi_term, 4)}` },
        el("div", { class: "bar-track" },
          el("div", { class: "bar ref", style: `width:${(100 * l.reference_rate / max).toFixed(1)}%` }),
          el("div", { class: "bar live", style: `width:${(100 * l.live_rate / max).toFixed(1)}%` })),
        el("small", { class: "muted", text: `${pct(l.reference_rate)} → ${pct(l.live_rate)}` })),
      el("td", { class: "num", title: "mean activation when it fires: reference → live",
        text: `${fmt(l.reference_mean_activation, 2)} → ${fmt(l.live_mean_activation, 2)}` }))));
    setStatus(summary, d.jsd === null ? `no live traffic yet in this worker's window (${d.window_size} requests)`
      : `JSD ${fmt(d.jsd, 4)} · PSI ${fmt(d.psi, 3)} over the last ${d.window_requests} requests of this worker (grey: reference, orange: live)`, "ready");
  } catch (e) {
    $("#drift-table tbody").replaceChildren();
    setStatus(summary, e.message, "error", true);
  }
}

// -- recent traffic ------------------------------------------------------------------------------
async function loadRecent() {
  const status = $("#recent-status");
  setStatus(status, "loading…", "loading");
  try {
    const r = await api("/audit/recent?limit=50");
    $("#recent-table tbody").replaceChildren(...r.entries.map((e) => el("tr", { "data-id": e.id },
      el("td", { text: new Date(e.ts * 1000).toLocaleTimeString() }),
      el("td", {}, e.user_id === null ? el("span", { class: "muted", text: "history" })
        : el("a", { class: "user", text: e.user_id, onclick: () => openUser(e.user_id) })),
      el("td", { text: [e.suppressed.length ? e.suppressed.map((j) => "#" + j).join(",") : "", e.baseline ? "baseline " + e.baseline : "", e.policy ? "policy " + e.policy : ""].filter(Boolean).join(" · ") || "–" }),
      el("td", { text: e.items.slice(0, 5).map((i) => i.title).join(" · ") }),
      el("td", { class: "muted", text: e.active.map((j) => "#" + j).join(" ") }))));
    setStatus(status, `${r.entries.length} sampled answers, newest first`, "ready");
  } catch (e) {
    $("#recent-table tbody").replaceChildren();
    setStatus(status, e.message, "error", true);
  }
}

function openUser(id) {
  document.querySelector('input[name="who"][value="user"]').checked = true;
  syncWho();
  $("#user-id").value = id;
  show("recs");
  load(whoFromForm());
}

// -- wiring --------------------------------------------------------------------------------------
function show(view) {
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.dataset.view === view);
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "view-" + view;
  if (view === "dict") { loadDict(); loadDrift(); }
  if (view === "recent") loadRecent();
}

function syncWho() {
  const hist = document.querySelector('input[name="who"]:checked').value === "history";
  $("#history").hidden = !hist;
  $("#user-id").hidden = hist;
}

function init() {
  for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => show(t.dataset.view));
  for (const r of document.querySelectorAll('input[name="who"]')) r.addEventListener("change", syncWho);
  $("#who-form").addEventListener("submit", (ev) => { ev.preventDefault(); load(whoFromForm()); });
  $("#k").addEventListener("change", () => { if (state.who) load(state.who); });
  $("#baseline-toggle").addEventListener("change", toggleBaseline);
  $("#baseline-strength").addEventListener("change", () => { if ($("#baseline-toggle").checked) toggleBaseline(); });
  $("#suppress-strength").addEventListener("change", () => { if (state.suppress.size) rerank(); });
  $("#policy").addEventListener("change", choosePolicy);
  $("#token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("#token").value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
    $("#token").value = "";
    $("#token-state").textContent = t ? "token set (this tab only)" : "no token";
    const active = document.querySelector(".tab.active").dataset.view;
    if (active !== "recs") show(active);
    loadPolicies();
  });
  $("#token-state").textContent = token() ? "token set (this tab only)" : "no token";
  $("#dict-q").addEventListener("input", () => { clearTimeout(dictTimer); dictTimer = setTimeout(loadDict, 250); });
  $("#dict-form").addEventListener("submit", (ev) => { ev.preventDefault(); loadDict(); });
  $("#dict-sort").addEventListener("change", loadDict);
  $("#drift-refresh").addEventListener("click", loadDrift);
  $("#drift-sort").addEventListener("change", loadDrift);
  $("#recent-refresh").addEventListener("click", loadRecent);
  api("/bundle").then((b) => {
    state.bundle = b;
    const keeps = b.metrics && b.metrics.sae_heldout_ndcg10_ratio;
    $("#bundle-info").textContent = `bundle ${b.version} · ${b.model.name} · SAE ${b.sae.n_latents} latents, k=${b.sae.k}` +
      (b.sae.encoder && b.sae.encoder !== "topk" ? ` (${b.sae.encoder} encoder)` : "") +
      (typeof keeps === "number" ? ` · concepts alone keep ${(100 * keeps).toFixed(1)}% of NDCG@10` : "");
    $("#bundle-info").title = "NDCG@10 with the SAE's reconstruction in place of the model's activation, " +
      "over held-out activations, relative to the model: how much of the ranking the concepts capture";
    const warnings = b.quality_warnings || [];
    $("#bundle-warning").hidden = warnings.length === 0;
    $("#bundle-warning").textContent = warnings.length ? `⚠ ${warnings.length} quality warning${warnings.length > 1 ? "s" : ""}` : "";
    $("#bundle-warning").title = warnings.join("\n");
    if (!b.accepts_history) {
      $("#history-choice").hidden = true;
    }
  }).catch((e) => { $("#bundle-info").textContent = e.message; });
  loadPolicies();
  const params = new URLSearchParams(location.search);
  if (params.get("user_id")) openUser(params.get("user_id"));
}

init();
