"""The concept dictionary: one entry per SAE latent, written by the offline job, read by serving.

Pydantic models are the single source of truth for this file format (``concepts.json`` in a
bundle) and for the concept part of the service's wire format.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ConceptStatus = Literal["described", "undescribed", "dead"]


class Enrichment(BaseModel):
    """An item or user attribute over-represented where the latent fires."""

    model_config = ConfigDict(extra="forbid")

    feature: str = Field(
        description='an attribute: "group:value" (history share, e.g. "genre:Horror"), optionally '
        'prefixed by its source: "last:" (most recent item), "next:" (top recommendation), "user:"'
    )
    lift: float = Field(description="share among activating samples / share in the background")
    share: float = Field(description="share of activating samples that have the feature")
    background: float = Field(description="share of all samples that have the feature")
    count: int = Field(description="activating samples with the feature")


class ScoredSample(BaseModel):
    """One held-out sample the detection score used: what the scorer saw, whether the latent
    fires on it, and how the description scored it (0-10; above 5 = "the concept is present")."""

    model_config = ConfigDict(extra="forbid")

    history: list[str] = Field(default_factory=list, description="titles, oldest first (the last few)")
    recommendation: str | None = None
    fires: bool
    predicted: float = Field(description="the scorer's 0-10 prediction from the description alone")


class DetectionScore(BaseModel):
    """How well the description tells activating from non-activating held-out samples."""

    model_config = ConfigDict(extra="forbid")

    balanced_accuracy: float
    auc: float
    n_positive: int
    n_negative: int
    samples: list[ScoredSample] = Field(
        default_factory=list, description="a few of the positives and negatives scored, the misjudged ones first")


class Example(BaseModel):
    """One activating training sample: its recent history and the model's top recommendation."""

    model_config = ConfigDict(extra="forbid")

    history: list[str] = Field(default_factory=list, description="titles, oldest first")
    recommendation: str | None = None
    activation: float = 0.0


class Evidence(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_items: list[str] = Field(default_factory=list, description="titles most associated")
    enriched: list[Enrichment] = Field(default_factory=list)
    activation_quantiles: dict[str, float] = Field(default_factory=dict)
    histogram: list[int] = Field(default_factory=list, description="counts over 20 equal bins")
    histogram_max: float = 0.0
    n_activating: int = 0
    examples: list[Example] = Field(default_factory=list, description="strongest samples, one per user")


class Concept(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latent: int
    status: ConceptStatus
    description: str | None = None
    attributes: list[str] = Field(default_factory=list, description="features the description names")
    headline: list[str] = Field(
        default_factory=list,
        description="the attributes the description leads with; each has the support the dictionary's "
        "summary states (headline_min_support of the firing samples, headline_min_count samples)",
    )
    exemplars: list[str] = Field(
        default_factory=list,
        description="titles of the items that stand for the latent (most over-represented as the latest "
        "item or the recommendation); they lead the description when no attribute names it",
    )
    duplicates: list[int] = Field(
        default_factory=list, description="near-duplicate latents: same description, or attributes overlapping >= 80%"
    )
    confidence: float | None = Field(
        default=None, description="paper protocol: 5 activating + 5 random, threshold 5 of 10"
    )
    detection: DetectionScore | None = None
    match_threshold: float | None = Field(
        default=None,
        description="stats predictor: attribute-match score above which a sample is predicted "
        "to activate (calibrated on SAE training samples only)",
    )
    firing_frequency: float = 0.0
    describer: str | None = None
    model: str | None = None
    reason: str | None = Field(default=None, description="why undescribed or dead, or why confidence was capped")
    evidence: Evidence = Field(default_factory=Evidence)


class ConceptDictionary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    describer: str
    model: str | None = None
    concepts: list[Concept]
    summary: dict = Field(default_factory=dict)

    def by_latent(self) -> dict[int, Concept]:
        return {c.latent: c for c in self.concepts}


def placeholder_dictionary(firing_frequency, reason: str = "not interpreted yet") -> ConceptDictionary:
    """Every latent marked (dead if it never fired), for bundles built without interpretation."""
    return ConceptDictionary(
        describer="none",
        concepts=[
            Concept(
                latent=j,
                status="dead" if f == 0 else "undescribed",
                firing_frequency=float(f),
                reason="never fires on the reference activations" if f == 0 else reason,
            )
            for j, f in enumerate(firing_frequency)
        ],
    )
