"""The concept atlas: one static, self-contained HTML page per bundle (``atlas.html``).

A sortable overview table and one card per latent (``id="latent-<j>"``) with its description,
scores, an inline SVG activation histogram, top items and enriched attributes. No external
resources, so it opens offline from the file system.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from recsae.concepts import Concept, ConceptDictionary

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}
#overview th{cursor:pointer;background:#eee;position:sticky;top:0}#overview th:hover{background:#ddd}
.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:12px;margin-top:1.5em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px;min-width:0;overflow-x:auto}
.card h3{margin:0 0 4px;font-size:1.05em}.card summary{cursor:pointer}.desc{font-weight:600;margin:4px 0}
.dead{opacity:.55}.undescribed .desc{color:#a33}.muted{color:#777;font-size:.9em}
.card table{font-size:.85em;width:100%}.tag.head{background:#dfd}.tag{display:inline-block;background:#eef;border-radius:3px;padding:0 4px;margin:1px;font-size:.85em}
svg.hist rect{fill:#4a7bd0}
"""

_JS = r"""
var heads = document.querySelectorAll('#overview th');
heads.forEach(function(th, col){
  th.addEventListener('click', function(){
    var tb = document.querySelector('#overview tbody');
    var rows = Array.prototype.slice.call(tb.rows);
    var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      if (!isNaN(nx) && !isNaN(ny)) return dir * (nx - ny);
      if (isNaN(nx) !== isNaN(ny)) return isNaN(nx) ? 1 : -1;
      return dir * String(x).localeCompare(String(y));
    });
    rows.forEach(function(r){ tb.appendChild(r); });
  });
});
// #sort=3 sorts by the 4th column ascending, #sort=-3 descending (links and tests use it)
var m = /^#sort=(-?)(\d+)$/.exec(location.hash);
if (m && heads[+m[2]]) { heads[+m[2]].click(); if (m[1]) heads[+m[2]].click(); }
// #latent-N opens that card (cards are collapsed so the page stays short)
function openHash(){
  var h = /^#latent-(\d+)$/.exec(location.hash); if (!h) return;
  var card = document.getElementById('latent-' + h[1]);
  if (card) { card.querySelector('details').open = true; card.scrollIntoView(); }
}
window.addEventListener('hashchange', openHash); openHash();
// search: a latent id, or words that all appear in the description
var q = document.getElementById('q');
q.addEventListener('input', function(){
  var v = q.value.trim().toLowerCase(), words = v.split(/\s+/).filter(Boolean), shown = 0;
  function hit(id, text){ return !v || (/^\d+$/.test(v) ? id === v : words.every(function(w){ return text.indexOf(w) >= 0; })); }
  document.querySelectorAll('#overview tbody tr').forEach(function(r){
    var ok = hit(r.cells[0].dataset.v, String(r.cells[2].dataset.v).toLowerCase()); r.hidden = !ok; if (ok) shown++;
  });
  document.querySelectorAll('section.card').forEach(function(c){
    c.hidden = !hit(c.id.slice(7), c.dataset.text);
  });
  document.getElementById('qcount').textContent = v ? shown + ' match' + (shown === 1 ? '' : 'es') : '';
});
// #q=words opens the page filtered (a link can carry a search)
var qh = /^#q=(.*)$/.exec(location.hash);
if (qh) { q.value = decodeURIComponent(qh[1]); q.dispatchEvent(new Event('input')); }
"""


_SOURCE_WORDS = {"last": "latest item", "next": "top recommendation", "user": "user", "": "in the history"}  # as concept.js words them
_POP_WORDS = {"head": "popular", "mid": "mid-popularity", "tail": "long-tail"}


def readable_attribute(attr: str, titles: dict[str, str] | None = None) -> str:
    """``next:item:88`` -> "top recommendation: Star Wars (1977)"; ``last:popularity:tail`` -> "latest
    item: long-tail"; ``decade:1980s`` -> "in the history: 1980s". The raw name stays in a tooltip."""
    source, rest = "", attr
    head, _, tail = attr.partition(":")
    if head in ("last", "next", "user"):
        source, rest = head, tail
    group, _, value = rest.partition(":")
    if group == "item":
        value = (titles or {}).get(value, f"item {value}")
    elif group == "popularity":
        value = _POP_WORDS.get(value, value)
    elif not value:
        value = rest
    elif group not in ("decade", "genre"):
        value = f"{group} {value}"
    return f"{_SOURCE_WORDS.get(source, source)}: {value}"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _fmt(x: float | None, nd: int = 2) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def histogram_svg(counts: list[int], vmax: float, width: int = 200, height: int = 48) -> str:
    """Bars of the 20-bin activation histogram (square-root height so small bins stay visible)."""
    if not counts or max(counts) == 0:
        return ""
    top = max(counts) ** 0.5
    bw = width / len(counts)
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{height - h:.1f}" width="{bw - 1:.1f}" height="{h:.1f}"><title>{c}</title></rect>'
        for i, c in enumerate(counts)
        for h in [height * (c**0.5) / top]
    )
    left = 34  # room for the y axis labels
    return (
        f'<svg class="hist" width="{width + left}" height="{height + 26}" viewBox="0 0 {width + left} {height + 26}" '
        f'role="img" aria-label="activation histogram: {sum(counts):,} firing samples, activation 0 to {vmax:.3g}">'
        f'<line x1="{left - 1}" y1="0" x2="{left - 1}" y2="{height}" stroke="#555"/>'
        f'<line x1="{left - 1}" y1="{height}" x2="{left + width}" y2="{height}" stroke="#555"/>'
        f'<text x="{left - 3}" y="9" font-size="9" text-anchor="end">{max(counts):,}</text>'
        f'<text x="{left - 3}" y="{height}" font-size="9" text-anchor="end">0</text><g transform="translate({left},0)">{bars}</g>'
        f'<text x="{left}" y="{height + 11}" font-size="9">0</text>'
        f'<text x="{left + width}" y="{height + 11}" font-size="9" text-anchor="end">{vmax:.3g}</text>'
        f'<text x="{left + width / 2}" y="{height + 23}" font-size="9" text-anchor="middle">activation '
        f'(bar height: samples, square-root scale)</text></svg>'
    )


def _card(c: Concept, titles: dict[str, str] | None = None) -> str:
    ev = c.evidence
    det = c.detection

    parts = [
        f'<section class="card {c.status}" id="latent-{c.latent}" data-text="{escape((c.description or c.reason or "").lower(), quote=True)}">',
        f"<details><summary><b>Latent {c.latent}</b> <span class=\"muted\">{c.status} · confidence "
        f"{_fmt(c.confidence)}</span> {escape(_clip(c.description or c.reason or '', 90))}</summary>",
        # the service's concept page: the same entry with live data (top users, policies, live rate)
        f'<a class="concept-page" href="/audit/concepts/{c.latent}">concept page on the service</a>',
        f'<div class="desc">{escape(c.description or c.reason or "")}</div>',
        '<div class="muted">'
        f"confidence {_fmt(c.confidence)} · detection BA {_fmt(det.balanced_accuracy if det else None)}"
        f" · AUC {_fmt(det.auc if det else None)} · fires on {c.firing_frequency:.2%}"
        + (f" · {escape(c.describer)}" if c.describer else "")
        + (f" ({escape(c.model)})" if c.model else "")
        + "</div>",
    ]
    if c.status == "described" and c.reason:
        parts.append(f'<div class="muted">{escape(c.reason)}</div>')
    if c.exemplars:
        parts.append('<div class="exemplars"><b>Exemplars:</b> ' + escape("; ".join(c.exemplars)) + "</div>")
    if c.duplicates:
        links = ", ".join(f'<a href="#latent-{j}">{j}</a>' for j in c.duplicates)
        parts.append(f'<div class="muted duplicates">near-duplicate of latent {links}</div>')
    if c.attributes:
        head = set(c.headline)
        parts.append("<div>" + "".join(
            f'<span class="tag{" head" if a in head else ""}" title="{escape(a, quote=True)}">'
            f'{escape(readable_attribute(a, titles))}</span>' for a in c.attributes
        ) + "</div>")  # fmt: skip
    parts.append(histogram_svg(ev.histogram, ev.histogram_max))
    if ev.top_items:
        parts.append("<div><b>Top items:</b> " + escape("; ".join(ev.top_items)) + "</div>")
    if ev.enriched:
        rows = "".join(
            f'<tr><td title="{escape(e.feature, quote=True)}">{escape(readable_attribute(e.feature, titles))}</td><td class="num">{e.share:.2f}</td>'
            f'<td class="num">{e.background:.2f}</td><td class="num">{e.lift:.1f}</td><td class="num">{e.count}</td></tr>'
            for e in ev.enriched[:6]
        )
        parts.append(
            "<table><thead><tr><th>enriched attribute</th><th>share</th><th>background</th><th>lift</th>"
            f"<th>count</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    if ev.examples:
        items = "".join(
            f"<li>{escape(' → '.join(x.history[-5:]))} ⇒ <i>{escape(x.recommendation or '')}</i> "
            f'<span class="muted">({x.activation:.3g})</span></li>'
            for x in ev.examples[:5]
        )
        parts.append(f'<div class="muted"><b>Strongest samples</b> (history → recommended, activation):</div><ul>{items}</ul>')
    parts.append("</details></section>")
    return "".join(parts)


def _row(c: Concept) -> str:
    det = c.detection
    cells = [
        (c.latent, f'<a href="#latent-{c.latent}">{c.latent}</a>'),
        (c.status, c.status),
        (c.description or c.reason or "", escape(_clip(c.description or c.reason or "", 140))
         + (f' <span class="muted">(near-duplicate of {", ".join(map(str, c.duplicates))})</span>' if c.duplicates else "")),
        (c.confidence, _fmt(c.confidence)),
        (det.balanced_accuracy if det else None, _fmt(det.balanced_accuracy if det else None)),
        (det.auc if det else None, _fmt(det.auc if det else None)),
        (c.firing_frequency, f"{c.firing_frequency:.3%}"),
    ]
    tds = "".join(
        f'<td data-v="{escape(str("" if v is None else v), quote=True)}"'
        f'{" class=num" if isinstance(v, (int, float)) and i != 0 else ""}>{h}</td>'
        for i, (v, h) in enumerate(cells)
    )
    return f"<tr>{tds}</tr>"


def render_atlas(concepts: ConceptDictionary, title: str = "Concept atlas", meta: dict | None = None,
                 titles: dict[str, str] | None = None) -> str:
    s = concepts.summary or {}
    head = " · ".join(
        f"{k.replace('_', ' ')}: {v}" for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    )
    info = escape(json.dumps(meta, default=str)[:300]) if meta else ""
    return "".join(
        [
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{escape(title)}</h1>",
            f'<p class="muted">describer {escape(concepts.describer)}'
            + (f" ({escape(concepts.model)})" if concepts.model else "")
            + f" · {escape(head)}</p>",
            f'<p class="muted">{info}</p>' if info else "",
            '<p><label>Search concepts <input id="q" type="search" placeholder="words or a latent id" '
            'aria-describedby="qhelp"></label> <span id="qhelp" class="muted">filters the table and the cards; '
            'click a card to open it; a link to #latent-N opens that card</span> <span id="qcount" class="muted"></span></p>',
            '<details open><summary><b>Overview</b> (click a column to sort)</summary>',
            '<table id="overview"><thead><tr><th>latent</th><th>status</th><th>description</th>'
            "<th>confidence</th><th>detection BA</th><th>AUC</th><th>firing</th></tr></thead><tbody>",
            *[_row(c) for c in concepts.concepts],
            '</tbody></table></details><div class="cards">',
            *[_card(c, titles) for c in concepts.concepts],
            f"</div><script>{_JS}</script></body></html>",
        ]
    )


def write_atlas(bundle_path: str | Path, out: str | Path | None = None) -> Path:
    """Render ``atlas.html`` from a bundle's ``concepts.json`` (into the bundle by default).

    The atlas is a view, not part of the bundle's payload: it is not in the manifest's hashes.
    """
    bundle = Path(bundle_path)
    concepts = ConceptDictionary.model_validate_json((bundle / "concepts.json").read_text())
    meta = None
    if (bundle / "manifest.json").exists():
        m = json.loads((bundle / "manifest.json").read_text())
        meta = {"version": m.get("version"), "dataset": m.get("dataset", {}).get("dataset"),
                "model": m.get("model", {}).get("name"), "sae": m.get("sae")}  # fmt: skip
    path = Path(out) if out else bundle / "atlas.html"
    tmp = path.with_suffix(".html.tmp")
    titles = None
    if (bundle / "catalog.json").exists():
        cat = json.loads((bundle / "catalog.json").read_text())
        titles = {str(i): t for i, t in zip(cat.get("item_ids", []), cat.get("titles", [])) if t}
    tmp.write_text(render_atlas(concepts, f"Concept atlas — {bundle.name}", meta, titles), encoding="utf-8")
    tmp.chmod(0o644)  # in the bundle: readable wherever it is mounted, like the rest of it
    tmp.replace(path)
    return path
