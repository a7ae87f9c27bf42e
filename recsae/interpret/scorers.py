"""Scorers: how well a description predicts where its latent fires, on *held-out* samples only.

A scorer's predictor reads the description (never the activations) and gives each sample a
0-10 prediction. Two protocols use it:

* the paper's (RecSAE, arXiv 2411.06112): 5 activating + 5 random samples, confidence =
  (#activating predicted > 5 + #random predicted <= 5) / 10, averaged over a few seeded repeats;
* strict detection: up to 50 activating + 50 non-activating samples, balanced accuracy of the
  same cut at 5 and the AUC of the raw predictions.

Samples are drawn with a generator seeded by (seed, latent, repeat), so a latent's samples do not
depend on the order or concurrency of the run (and LLM prompts repeat exactly: cache hits).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from recsae.concepts import DetectionScore
from recsae.interpret.describers import SYSTEM, Description
from recsae.interpret.evidence import EvidenceContext, FeatureSpace, SampleSet, to_scale
from recsae.interpret.llm import LLMClient, parse_json


class ScoringError(Exception):
    """The predictor could not score (e.g. the LLM kept failing); the reason is the message."""


class Scorer(ABC):
    name: str = "scorer"

    @abstractmethod
    def predict(self, desc: Description, samples: SampleSet, rows: np.ndarray) -> np.ndarray:
        """0-10 per row, from the description alone; raises ScoringError."""


class StatsScorer(Scorer):
    """Deterministic: how strongly a sample matches the description's attributes, mapped to 0-10
    so that the training-calibrated threshold sits at 5 (above 5 = predicted to fire)."""

    name = "stats"

    def __init__(self, space: FeatureSpace) -> None:
        self.space = space

    def predict(self, desc: Description, samples: SampleSet, rows: np.ndarray) -> np.ndarray:
        if desc.threshold is None:
            raise ScoringError("no calibrated threshold for the stats predictor")
        return to_scale(self.space.match(desc.attributes, samples, rows), desc.threshold)


class ScoreAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    scores: list[float]

    @field_validator("scores")
    @classmethod
    def _range(cls, v: list[float]) -> list[float]:
        if any(not 0 <= x <= 10 for x in v):
            raise ValueError("scores must be within 0..10")
        return v


class LLMScorer(Scorer):
    """The LLM is the predictor: it reads the description and rates each sample 0-10."""

    name = "llm"

    def __init__(self, client: LLMClient, ctx: EvidenceContext) -> None:
        self.client, self.ctx = client, ctx

    def prompt(self, desc: Description, samples: SampleSet, rows: np.ndarray) -> list[dict]:
        space = self.ctx.space
        attrs = [f"{a} ({space.label(a)})" if ":item:" in f":{a}" else a for a in desc.attributes]
        lines = [
            f"A latent of the sparse autoencoder is described as: \"{desc.text}\""
            + (f" (attributes: {', '.join(attrs)})" if attrs else ""),
            "For each sample (a user's recent history, oldest -> newest, and the model's next "
            "recommendation) predict how strongly the latent fires on it, from 0 (not at all) to 10.",
            "",
            *[f"{i + 1}. {self.ctx.text(samples, int(r), self.client.s.max_titles)}" for i, r in enumerate(rows)],
            "",
            f'Reply with {{"scores": [<exactly {len(rows)} numbers from 0 to 10, one per sample, in order>]}}',
        ]
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]

    def requests(self, desc: Description, samples: SampleSet, rows: np.ndarray) -> list[tuple[list[dict], Callable]]:
        """(messages, parser) per chunk of ``chunk`` samples: what ``predict`` asks."""
        out = []
        step = self.client.s.chunk
        for s in range(0, len(rows), step):
            part = rows[s : s + step]

            def parse(c: str, n: int = len(part)) -> list[float]:
                ans = parse_json(c, ScoreAnswer)
                if len(ans.scores) != n:
                    raise ValueError(f"{len(ans.scores)} scores for {n} samples")
                return ans.scores

            out.append((self.prompt(desc, samples, part), parse))
        return out

    def predict(self, desc: Description, samples: SampleSet, rows: np.ndarray) -> np.ndarray:
        out = []
        for messages, parse in self.requests(desc, samples, rows):
            scores, reason = self.client.ask(messages, parse)
            if scores is None:
                raise ScoringError(f"LLM: {reason}")
            out += scores
        return np.asarray(out, dtype=np.float64)


class RequestCollector(Scorer):
    """Batch mode: runs the scoring protocol without asking, collecting the LLM scorer's
    requests (the samples do not depend on the predictions, so the prompts are exactly those
    the real run will send and then find in the answer cache)."""

    name = "collect"

    def __init__(self, scorer: LLMScorer) -> None:
        self.scorer = scorer
        self.items: list[tuple[list[dict], Callable]] = []

    def predict(self, desc: Description, samples: SampleSet, rows: np.ndarray) -> np.ndarray:
        self.items += self.scorer.requests(desc, samples, rows)
        return np.zeros(len(rows), dtype=np.float64)


# -- protocols -----------------------------------------------------------------------------------
def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of an activating sample > score of a non-activating one), ties count one half."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    v = np.concatenate([pos, neg])
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    sv = v[order]
    # average ranks over ties
    _, first, counts = np.unique(sv, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@dataclass
class LatentScore:
    confidence: float | None
    detection: DetectionScore | None
    reason: str | None = None
    # (held-out row, fires, predicted) of a few scored samples, the misjudged first: the evidence
    # the concept page shows next to the confidence
    shown: list[tuple[int, bool, float]] | None = None


def _shown(pos, pp, neg, pn, per_side: int = 3) -> list[tuple[int, bool, float]]:
    """Up to ``per_side`` positives and negatives, misjudged ones first (a positive scored <= 5,
    a negative > 5), then the most confidently right."""
    out: list[tuple[int, bool, float]] = []
    for rows, preds, fires in ((pos, pp, True), (neg, pn, False)):
        wrong = (preds <= 5) if fires else (preds > 5)
        order = sorted(range(len(rows)), key=lambda i: (not wrong[i], -preds[i] if fires else preds[i]))
        out += [(int(rows[i]), fires, round(float(preds[i]), 2)) for i in order[:per_side]]
    return out


def score_latent(
    scorer: Scorer,
    desc: Description,
    heldout: SampleSet,
    seed: int = 0,
    repeats: int = 5,
    per_class: int = 50,
) -> LatentScore:
    """Paper confidence and strict detection of one described latent on held-out samples."""
    j = desc.latent
    pos_all, _ = heldout.firing(j)
    if len(pos_all) == 0:
        return LatentScore(None, None, "never fires on held-out samples")
    n = len(heldout)
    try:
        confs = []
        for r in range(repeats):
            rng = np.random.default_rng([seed, j, 10 + r])
            pos = rng.choice(pos_all, size=min(5, len(pos_all)), replace=False)
            rnd = rng.choice(n, size=min(5, n), replace=False)
            rows = np.concatenate([pos, rnd])
            perm = rng.permutation(len(rows))  # the predictor never sees them grouped
            pred = np.empty(len(rows))
            pred[perm] = scorer.predict(desc, heldout, rows[perm])
            confs.append(((pred[: len(pos)] > 5).sum() + (pred[len(pos) :] <= 5).sum()) / len(rows))
        rng = np.random.default_rng([seed, j, 99])
        pos = rng.choice(pos_all, size=min(per_class, len(pos_all)), replace=False)
        firing = np.zeros(n, bool)
        firing[pos_all] = True
        cand = rng.choice(n, size=min(n, 4 * per_class + 64), replace=False)
        neg = cand[~firing[cand]][:per_class]
        rows = np.concatenate([pos, neg])
        perm = rng.permutation(len(rows))
        pred = np.empty(len(rows))
        pred[perm] = scorer.predict(desc, heldout, rows[perm])
        pp, pn = pred[: len(pos)], pred[len(pos) :]
        ba = 0.5 * ((pp > 5).mean() + (pn <= 5).mean()) if len(pn) else float((pp > 5).mean())
        det = DetectionScore(
            balanced_accuracy=round(float(ba), 4),
            auc=round(auc(pp, pn), 4) if len(pn) else 0.5,
            n_positive=int(len(pp)),
            n_negative=int(len(pn)),
        )
    except ScoringError as e:
        return LatentScore(None, None, f"scoring failed: {e}")
    return LatentScore(round(float(np.mean(confs)), 4), det, None, _shown(pos, pp, neg, pn))


# -- ground truth (synthetic data) ---------------------------------------------------------------
def names_concept(attributes: list[str], features: tuple[str, ...] | list[str]) -> bool:
    """A description names a planted concept when its attributes (any source, items aside)
    mention every feature that defines the concept."""
    from recsae.interpret.evidence import Attribute

    named = {Attribute.parse(a).feature for a in attributes if Attribute.parse(a).group != "item"}
    return set(features) <= named


def planted_recovery(concepts, truth, min_confidence: float = 0.8) -> dict:
    """Recovery: share of planted concepts named by some well-scored latent (paper confidence
    >= ``min_confidence``). Precision: share of well-scored latents naming some planted concept."""
    good = [c for c in concepts if c.confidence is not None and c.confidence >= min_confidence]
    found = {t.name: [c.latent for c in good if names_concept(c.attributes, t.features)] for t in truth.concepts}
    precise = [any(names_concept(c.attributes, t.features) for t in truth.concepts) for c in good]
    return {
        "recovery": round(float(np.mean([bool(v) for v in found.values()])), 4),
        "precision": round(float(np.mean(precise)), 4) if good else 0.0,
        "n_well_scored": len(good),
        "latents_per_concept": {k: len(v) for k, v in found.items()},
    }
