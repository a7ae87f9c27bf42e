"""Describers: evidence about a latent -> a description, the attributes it names, and why.

``stats`` (the default) is offline and deterministic: it names the latent from its most enriched
attributes, choosing the few that best tell firing from non-firing *training* samples. ``llm``
asks an OpenAI-compatible chat endpoint through :mod:`recsae.interpret.llm` (the transport: cache,
rate limiter, retries, batch API); every answer is cached on disk as it arrives, so an interrupted
run resumes by asking only for what is missing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from recsae.interpret.evidence import Attribute, LatentEvidence, best_threshold, calibration_rows
from recsae.interpret.llm import LLMClient, parse_json


@dataclass
class Description:
    """What a describer says about one latent."""

    latent: int
    status: Literal["described", "undescribed"]
    text: str | None = None
    attributes: list[str] = field(default_factory=list)
    threshold: float | None = None  # stats predictor calibration (training samples only)
    reason: str | None = None
    headline: list[str] = field(default_factory=list)  # supported feature attributes the text leads with
    exemplars: list[str] = field(default_factory=list)  # titles of the items that stand for the latent


class Describer(ABC):
    name: str = "describer"
    model: str | None = None

    @abstractmethod
    def describe(self, ev: LatentEvidence) -> Description:
        """Describe one latent from its training evidence; never raises for one bad latent."""

    def usage(self) -> dict:
        return {}


# -- naming ---------------------------------------------------------------------------------------
def _join(words: list[str], last: str = "and") -> str:
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} {last} {words[-1]}"


def name_features(features: list[str]) -> str:
    """Plain words for item features: "1990s Horror and Thriller", "popular (head) titles"."""
    by: dict[str, list[str]] = {}
    for f in features:
        g, _, v = f.partition(":")
        if v not in by.setdefault(g, []):
            by[g].append(v)
    pop = by.pop("popularity", [])
    genres, decades, tags = by.pop("genre", []), by.pop("decade", []), by.pop("tag", [])
    words = ["/".join(sorted(decades))] if decades else []
    coded = False
    for g, vals in by.items():
        if all(v.replace(".", "").isdigit() for v in vals):
            words.append(f"{g.capitalize()} {' or '.join(vals)}")
            coded = True
        else:
            words.append(" or ".join(vals))
    if genres:
        words.append(_join(genres))
    if tags:
        words.append("tagged " + _join([f"'{t}'" for t in tags], "or"))
    core = " ".join(words)
    popw = _join([{"head": "popular (head)", "mid": "mid-popularity", "tail": "long-tail"}.get(p, p) for p in pop], "or")
    if not core:
        return f"{popw} titles" if popw else ""
    if coded and not genres:
        core += " items"
    return f"{core}, {popw}" if popw else core


def describe_attributes(attributes: list[str], label: Callable[[str], str], max_items: int = 4) -> list[str]:
    """One phrase per source: "recommends 1990s Action such as Men in Black (1997) or Eraser (1996)"."""
    by: dict[str, tuple[list[str], list[str]]] = {}
    for name in attributes:
        a = Attribute.parse(name)
        feats, items = by.setdefault(a.source, ([], []))
        (items if a.group == "item" else feats).append(name)
    lead = {"history": "history mostly", "last": "latest item", "next": "recommends", "user": "users:"}
    out = []
    for source in SOURCE_ORDER:
        if source not in by:
            continue
        feats, items = by[source]
        if source == "user":
            out.append(f"users: {', '.join(label(n) for n in feats)}")
            continue
        what = name_features([Attribute.parse(n).feature for n in feats])
        if items:
            titles = [label(n) for n in items]
            more = f" (+{len(titles) - max_items} more)" if len(titles) > max_items else ""
            listed = _join(titles[:max_items], "or") + more
            what = f"{what} such as {listed}" if what else listed
            if source == "history":
                what = f"includes {what}"
        out.append(f"{lead[source]} {what}" if source != "history" or not items else f"history {what}")
    return out


SOURCE_ORDER = ("history", "last", "next", "user")


# -- stats ---------------------------------------------------------------------------------------
class StatsDescriber(Describer):
    """Greedy choice among the most enriched attributes, judged on training samples only.

    Candidates: per source (history, last item, top recommendation) the few item features whose
    share rises most over the background, the most enriched user features, per source one *item
    set* (items much more often the latest item / the recommendation when the latent fires), and
    per feature group the fewest values most firing samples share (a *cover*). Clauses are added
    while they raise the balanced accuracy of the match predictor (firing vs random non-firing
    training samples). The latent is then *named*: covers of every source already used are added
    when that costs at most ``name_tolerance`` of balanced accuracy, so "latest item: Romance
    such as ..." replaces a bare list of titles. The predictor's threshold is kept for scoring.

    The *headline* (the text before " — ") names only features with support as well as lift:
    at least ``min_support`` of the firing samples (mean feature value: the share of rows for
    the latest item / the recommendation, of window items for the history) and ``min_count``
    firing samples, lift >= ``headline_lift``. When no such feature names the latent (popularity
    or tags aside), its *exemplars* do: the items most over-represented as the latest item or
    the recommendation, from the item-set clause (added when it costs at most
    ``name_tolerance``, so the scorer reads what the headline names), e.g.
    "Britney Spears, Christina Aguilera, Rihanna — tags: pop, dance".
    """

    name = "stats"

    def __init__(
        self,
        seed: int = 0,
        max_clauses: int = 3,
        per_source: int = 4,
        item_set: int = 10,
        min_gain: float = 0.005,
        name_tolerance: float = 0.03,
        shared: float = 0.7,
        min_support: float = 0.3,
        min_count: int = 10,
        headline_lift: float = 1.5,
        headline_terms: int = 3,
        n_exemplars: int = 3,
    ) -> None:
        self.seed, self.max_clauses, self.per_source = seed, max_clauses, per_source
        self.item_set, self.min_gain = item_set, min_gain
        self.name_tolerance, self.shared = name_tolerance, shared
        self.min_support, self.min_count, self.headline_lift = min_support, min_count, headline_lift
        self.headline_terms, self.n_exemplars = headline_terms, n_exemplars

    def rules(self) -> dict:
        """The headline rule, stated in the dictionary's summary."""
        return {"headline_min_support": self.min_support, "headline_min_count": self.min_count,
                "headline_min_lift": self.headline_lift}  # fmt: skip

    def headline(self, ev: LatentEvidence) -> list[str]:
        """Up to ``headline_terms`` item/user-free features with support and lift, most telling first
        (share x log lift); one source per feature."""
        ctx = ev.context
        lift = ev.shares / np.maximum(ctx.background, 1e-9)
        ok = (
            (ctx.sources != "user") & (ev.shares >= self.min_support) & (ev.counts >= self.min_count)
            & (lift >= self.headline_lift)
        )  # fmt: skip
        cols = np.flatnonzero(ok)
        cols = cols[np.argsort(-(ev.shares[cols] * np.log(lift[cols])), kind="stable")]
        out, seen = [], set()
        for c in cols:
            a = Attribute.parse(ctx.names[c])
            if a.feature not in seen:
                seen.add(a.feature)
                out.append(ctx.names[c])
            if len(out) == self.headline_terms:
                break
        return out

    def covers(self, ev: LatentEvidence, source: str) -> list[list[str]]:
        """Per feature group, the fewest values (at most 2) that most firing samples have in this
        source, e.g. ``[last:genre:Romance]`` or ``[last:decade:1970s, last:decade:1980s]``;
        kept when they are at least 1.5x as common as in the background."""
        ctx = ev.context
        by: dict[str, list[int]] = {}
        for c in np.flatnonzero(ctx.sources == source):
            by.setdefault(Attribute.parse(ctx.names[c]).group, []).append(int(c))
        out = []
        for cols in by.values():
            cols = sorted(cols, key=lambda c: -ev.shares[c])[:2]
            for n in (1, 2):
                share, bg = ev.shares[cols[:n]].sum(), min(1.0, ctx.background[cols[:n]].sum())
                if share >= self.shared and share >= 1.5 * bg and all(ev.shares[c] >= 0.15 for c in cols[:n]):
                    out.append([ctx.names[c] for c in cols[:n]])
                    break
        return out

    def candidates(self, ev: LatentEvidence) -> list[list[str]]:
        ctx = ev.context
        diff = ev.shares - ctx.background
        lift = ev.shares / np.maximum(ctx.background, 1e-9)
        out: list[list[str]] = []
        for source, n in (("history", self.per_source), ("last", self.per_source), ("next", self.per_source), ("user", 2)):
            cols = np.flatnonzero(ctx.sources == source)
            cols = sorted((c for c in cols if diff[c] > 0.02 and lift[c] > 1.2), key=lambda c: -diff[c])[:n]
            out += [[ctx.names[c]] for c in cols]
        for source in ("last", "next"):
            items = ev.item_set(source, n=self.item_set)
            if items:
                out.append([ctx.space.item_attribute(source, e.item) for e in items])
        for source in ("last", "next"):
            out += [c for c in self.covers(ev, source) if c not in out]
        return out

    def describe(self, ev: LatentEvidence) -> Description:
        ctx, space = ev.context, ev.context.space
        pos, neg = calibration_rows(ev, seed=self.seed)
        rows = np.concatenate([pos, neg])
        n_pos = len(pos)
        memo: dict[tuple, np.ndarray] = {}

        def evaluate(attrs: list[str]) -> tuple[float, float]:
            vals = []
            for c in space.clauses(attrs):
                if c not in memo:
                    memo[c] = space.clause_values(c, ctx.train, rows)
                vals.append(memo[c])
            s = np.mean(vals, axis=0)
            t, ba = best_threshold(s[:n_pos], s[n_pos:])
            return ba, t

        chosen: list[str] = []
        best_ba, best_t = 0.5, None
        cands = self.candidates(ev)
        for _ in range(self.max_clauses):
            trials = [(evaluate(chosen + c), c) for c in cands if not set(c) <= set(chosen)]
            if not trials:
                break
            (ba, t), c = max(trials, key=lambda x: x[0][0])
            if ba < best_ba + self.min_gain:
                break
            chosen, best_ba, best_t = chosen + [a for a in c if a not in chosen], ba, t
        if not chosen:
            return Description(ev.latent, "undescribed", reason="no attribute separates firing from non-firing training samples")
        # name what the firing samples share, in every source already used, when it costs at
        # most name_tolerance of balanced accuracy (item sets become "Romance such as ...")
        floor = best_ba - self.name_tolerance
        used = {Attribute.parse(a).source for a in chosen}
        for source in [s for s in ("history", "last", "next") if s in used]:
            have = {Attribute.parse(a).group for a in chosen if Attribute.parse(a).source == source}
            for cover in self.covers(ev, source):
                if Attribute.parse(cover[0]).group in have:
                    continue
                ba, t = evaluate(chosen + cover)
                if ba >= floor:
                    chosen, best_ba, best_t = chosen + cover, ba, t
        headline = self.headline(ev)
        exemplars: list[str] = []
        if not [h for h in headline if Attribute.parse(h).group not in GENERIC_GROUPS]:
            # no feature names it: its exemplars do, from an item set the scorer reads too
            for source in ev.exemplar_sources():
                items = ev.item_set(source, n=self.item_set)
                clause = [space.item_attribute(source, e.item) for e in items]
                if not clause:
                    continue
                if not set(clause) <= set(chosen):
                    ba, t = evaluate(chosen + clause)
                    if ba < floor:
                        continue
                    chosen, best_ba, best_t = chosen + [a for a in clause if a not in chosen], ba, t
                exemplars = [space.titles[e.item] for e in items[: self.n_exemplars]]
                break
        text = self.text(ev, chosen, headline, exemplars)
        return Description(
            ev.latent, "described", text=text, attributes=chosen, threshold=best_t, headline=headline,
            exemplars=exemplars or ev.exemplars(self.n_exemplars),
        )  # fmt: skip

    def text(self, ev: LatentEvidence, attributes: list[str], headline: list[str], exemplars: list[str]) -> str:
        """Headline (supported features, or exemplars and tags) — what the predictor reads."""
        space = ev.context.space
        feats = [Attribute.parse(h).feature for h in headline]
        if exemplars:
            tags = [f.partition(":")[2] for f in feats if f.startswith("tag:")]
            head = ", ".join(exemplars) + (f" — tags: {', '.join(tags)}" if tags else "")
        else:
            head = name_features(feats)
        body = "; ".join(describe_attributes(attributes, space.label))
        return f"{head} — {body}" if head else body


#: feature groups that alone do not name a concept: popularity says how popular, tags need items
GENERIC_GROUPS = ("popularity", "tag")


def names_nothing(text: str | None, attributes: list[str], exemplars: list[str]) -> bool:
    """A description whose attributes name no item and no feature beyond popularity, and whose
    text names none of the latent's exemplars."""
    return all(Attribute.parse(a).group == "popularity" for a in attributes) and not any(
        e in (text or "") for e in exemplars
    )


class DescribeAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    description: str
    attributes: list[str] = Field(default_factory=list)

    @field_validator("description")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        v = " ".join(v.split())
        if not v:
            raise ValueError("empty description")
        return v[:300]


def parse_describe(content: str) -> DescribeAnswer:
    return parse_json(content, DescribeAnswer)


SYSTEM = (
    "You explain latent features of a sparse autoencoder trained on the internal user "
    "representation of a recommender system. Answer with one JSON object and nothing else."
)


def exemplar_lines(ev: LatentEvidence, n: int = 3) -> list[str]:
    """The stats describer's naming evidence for the LLM: exemplar items and the supported
    features (the headline rule), so names-only data gets named by items and tags there too."""
    space, out = ev.context.space, []
    for source in ev.exemplar_sources():
        items = ev.item_set(source)[:n]
        if items:
            where = "the most recent item" if source == "last" else "the recommended item"
            out.append(
                f"Exemplar items (most over-represented as {where}): "
                + "; ".join(f"{space.titles[e.item]} ({space.item_attribute(source, e.item)})" for e in items)
            )
            break
    d = StatsDescriber()
    head = d.headline(ev)
    if head:
        out.append(
            f"Attributes shared by >= {d.min_support:.0%} of firing samples: "
            + ", ".join(f"{h} ({ev.shares[ev.context.names.index(h)]:.2f})" for h in head)
        )
    out.append("If no attribute names what the latent detects, name it by its exemplar items.")
    return out + [""]


class LLMDescriber(Describer):
    """Shows the LLM the evidence; it names the latent and picks attributes from a given list."""

    name = "llm"

    def __init__(self, client: LLMClient, dataset: str = "") -> None:
        self.client, self.dataset = client, dataset
        self.model = client.s.model

    def prompt(self, ev: LatentEvidence) -> list[dict]:
        ctx, space, n = ev.context, ev.context.space, self.client.s.max_titles
        q = ev.quantiles
        lines = [
            f"Latent {ev.latent} of the SAE over a recommender trained on {self.dataset or 'a dataset'}.",
            "A sample is a user's recent history (oldest -> newest) and the item the model recommends next.",
            f"It fires on {ev.firing_frequency:.2%} of samples; activation median {q['p50']:.3g}, max {q['max']:.3g}.",
            "",
            "Samples where it fires most strongly:",
            *[f"{i + 1}. {ctx.text(ctx.train, r, n)}" for i, r in enumerate(ev.top_rows)],
            "",
            "Samples where it does not fire:",
            *[f"{i + 1}. {ctx.text(ctx.train, r, n)}" for i, r in enumerate(ev.negative_rows)],
            "",
            "Attributes over-represented where it fires (share among firing samples vs all samples):",
            *[f"- {e.feature}: {e.share:.2f} vs {e.background:.2f} (lift {e.lift:.1f})" for e in ev.enriched],
            *[
                f"- {space.item_attribute(e.source, e.item)} ({space.titles[e.item]}): "
                f"{e.share:.2f} vs {e.background:.3f} (lift {e.lift:.1f})"
                for e in ev.items[:5] + [i for i in ev.items if i.source == "next"][:3]
            ],
            "",
            *exemplar_lines(ev),
            "Attribute names: 'genre:X' = share of history items with it; 'last:' = the most recent item; "
            "'next:' = the recommended item; 'user:' = the user; 'item:ID' = that item.",
            'Reply with {"description": "<at most 15 words naming what the latent detects>", '
            '"attributes": [<names from the attribute list above that your description refers to>]}',
        ]
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]

    def describe(self, ev: LatentEvidence) -> Description:
        ans, reason = self.client.ask(self.prompt(ev), parse_describe)
        if ans is None:
            return Description(ev.latent, "undescribed", reason=f"LLM: {reason}")
        return self.from_answer(ev, ans)

    def cached(self, ev: LatentEvidence) -> Description | None:
        """The description from the answer cache alone (batch mode), or None."""
        ans = self.client.peek(self.prompt(ev), parse_describe)
        return None if ans is None else self.from_answer(ev, ans)

    @staticmethod
    def from_answer(ev: LatentEvidence, ans: DescribeAnswer) -> Description:
        space = ev.context.space
        attrs = list(dict.fromkeys(a for a in ans.attributes if space.is_valid(a)))
        return Description(ev.latent, "described", text=ans.description, attributes=attrs, exemplars=ev.exemplars())

    def usage(self) -> dict:
        return self.client.usage.as_dict(self.client.s)
