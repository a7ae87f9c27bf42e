"""The wire format: every request and response of the service, as Pydantic models.

This module is the single source of truth: FastAPI validates with these models and the
OpenAPI document (service/openapi.json, regenerated with ``python -m service.openapi``) is
generated from them. Concept entries reuse ``recsae.concepts.Concept`` (the bundle's format).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from recsae.concepts import Concept, ConceptStatus
from recsae.policy import MAX_DESCRIPTION, POLICY_NAME, Encoder, SteerMode
from service.options import RecommendOptions

MAX_K = 100
MAX_HISTORY = 200
MAX_SUPPRESS = 256
_LATENT_ITEM = r"\s*\d{1,9}\s*(?::\s*[0-9.eE+-]{1,24}\s*)?"
_LATENT_LIST = re.compile(rf"^{_LATENT_ITEM}(,{_LATENT_ITEM})*$")


def _blank_to_none(v: Any) -> Any:
    return None if isinstance(v, str) and v.strip() == "" else v


def _no_bool(v: Any) -> Any:
    """JSON true/false is not a number: ``{"latent": false}`` must not mean latent 0."""
    if isinstance(v, bool):
        raise ValueError("must be a number, not true/false")
    return v


NoBool = BeforeValidator(_no_bool)

PolicyNameStr = Annotated[str, StringConstraints(pattern=POLICY_NAME)]
OptionalPolicyName = Annotated[
    # blank = none (documented); one pattern, not a union, so an error names the field itself
    Annotated[str, StringConstraints(pattern=rf"^(?:{POLICY_NAME[1:-1]}|\s*)$")] | None,
    BeforeValidator(_blank_to_none),
    Field(default=None, description="name of a stored suppression policy (see /admin/policies); empty = none"),
]
ModeOption = Annotated[
    Literal[(*get_args(SteerMode), "")] | None,  # "" = none, as the query string gives it
    BeforeValidator(_blank_to_none),
    Field(
        default=None,
        description=(
            "how suppression edits the representation: 'error' (default; keeps the SAE's "
            "reconstruction error, so suppressing nothing changes nothing) or 'reconstruction' "
            "(the paper's: decode the edited codes). Defaults to the policy's mode when a "
            "policy is named."
        ),
    ),
]


BASELINE_DOC = (
    "the SAE decoder bias b_dec: what every user's representation shares (a TopK SAE absorbs it "
    "into b_dec, never into a sparse latent); in a recommender chiefly item popularity"
)


def baseline_field(description: str) -> Any:
    """A baseline suppression strength in [0, 1], default 0 (finite: NaN and inf are refused)."""
    return Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False, description=description, examples=[0.4])


Strength01 = Annotated[float, NoBool]
"""A number field of a JSON body: true/false refused (type checked before the range)."""


def _strength(v: float, where: str) -> float:
    if not (v == v and 0.0 < v <= 1.0):  # NaN fails the first test
        raise ValueError(f"{where}: strength must be in (0, 1], got {v}")
    return float(v)


def merge_strengths(pairs: list[tuple[int, float | None]], default: float = 1.0) -> dict[int, float]:
    """Latent -> strength, first-mention order; a latent named twice keeps the stronger; a
    strength of None is ``default``."""
    out: dict[int, float] = {}
    for j, s in pairs:
        out[j] = max(default if s is None else s, out.get(j, 0.0))
    if len(out) > MAX_SUPPRESS:
        raise ValueError(f"at most {MAX_SUPPRESS} latents may be suppressed per request")
    return out


def parse_latent_pairs(raw: str | None) -> list[tuple[int, float | None]]:
    """'12, 57:0.5' -> [(12, None), (57, 0.5)]: latent ids, each with an optional ``:strength``
    in (0, 1] (None: the request's default), at most ``MAX_SUPPRESS`` different ids; '' or None -> []."""
    if raw is None or raw.strip() == "":
        return []
    if not _LATENT_LIST.match(raw):
        raise ValueError("must be comma-separated latent ids, each optionally with ':strength', e.g. '12,57:0.5'")
    pairs: list[tuple[int, float | None]] = []
    for part in raw.split(","):
        j, _, s = part.partition(":")
        try:
            strength = float(s) if s.strip() else None
        except ValueError:
            raise ValueError(f"{part.strip()!r}: strength must be a number in (0, 1]") from None
        pairs.append((int(j), None if strength is None else _strength(strength, part.strip())))
    if len({j for j, _ in pairs}) > MAX_SUPPRESS:
        raise ValueError(f"at most {MAX_SUPPRESS} latents may be suppressed per request")
    return pairs


def parse_latent_list(raw: str | None, default: float = 1.0) -> dict[int, float]:
    """'12, 57:0.5' -> {12: default, 57: 0.5}; '' or None -> {}."""
    return merge_strengths(parse_latent_pairs(raw), default)


class LatentList(str):
    """``GET /recommend``'s ``suppress`` text as validated: the text, with its parse (``pairs``)."""

    pairs: list[tuple[int, float | None]]


class LatentStrength(BaseModel):
    """One latent suppressed at its own strength (``POST /recommend``'s ``suppress`` entries)."""

    model_config = ConfigDict(extra="forbid")

    latent: Annotated[int, NoBool] = Field(ge=0)
    strength: Annotated[float, NoBool] = Field(gt=0.0, le=1.0, allow_inf_nan=False,
                                               description="share of its contribution removed")


# -- requests -------------------------------------------------------------------------------------
class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: Annotated[int, NoBool] = Field(10, ge=1, le=MAX_K, description=f"number of items to return (1..{MAX_K})")
    explain: bool = Field(False, description="add active concepts and per-item score decompositions")
    explain_top: Annotated[Annotated[int, Field(ge=1, le=1024), NoBool] | None, BeforeValidator(_blank_to_none)] = Field(
        None, description="with explain: each item lists its N largest contributions, the rest summed in `other`")
    policy: OptionalPolicyName
    exclude_seen: bool = Field(True, description="never recommend items already in the history")
    mode: ModeOption
    suppress_baseline: Strength01 = baseline_field(
        f"strength in [0, 1] with which to suppress the baseline, {BASELINE_DOC}; 0 = none, "
        "0.4 = remove 40% of it. With a policy that also suppresses it, the stronger of the two applies."
    )
    suppress_strength: Strength01 = Field(
        1.0, gt=0.0, le=1.0, allow_inf_nan=False, examples=[0.6],
        description="strength in (0, 1] with which the request's `suppress` latents are removed when they "
        "give none of their own: 1 = all of each one's contribution, 0.6 = 60% of it. A latent that a "
        "policy also suppresses gets the stronger of the two.",
    )


class RecommendQuery(_Options):
    """Query parameters of ``GET /recommend``; unknown parameters are rejected (422)."""

    user_id: str = Field(min_length=1, max_length=128, description="raw user id of the bundle's dataset")
    suppress: str | None = Field(
        None,
        max_length=4096,
        description="comma-separated latent ids to switch off for this request, each optionally with its "
        "own strength in (0, 1], e.g. '12,57:0.5' (12 at `suppress_strength`, 57 at half)",
        examples=["12,57:0.5"],
    )

    @field_validator("suppress")
    @classmethod
    def _parse_suppress(cls, v: str | None) -> str | None:
        if v is None:
            return None
        out = LatentList(v)  # parsed here, once: the options below read the parse
        out.pairs = parse_latent_pairs(v)
        return out

    def suppress_strengths(self) -> dict[int, float]:
        """Latent -> strength of this request's suppression."""
        s = self.suppress
        return merge_strengths(s.pairs if isinstance(s, LatentList) else parse_latent_pairs(s), self.suppress_strength)

    def options(self, audit: bool = False) -> RecommendOptions:
        return RecommendOptions.of(self, "query", audit)


class RecommendRequest(_Options):
    """Body of ``POST /recommend``: recommend for an explicit history (sequential bundles only)."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    history: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        min_length=1,
        max_length=MAX_HISTORY,
        description=f"raw item ids, oldest first (1..{MAX_HISTORY}); numbers are read as ids",
        examples=[["50", "172", "181"]],
    )
    suppress: list[Annotated[int, Field(ge=0), NoBool] | LatentStrength] = Field(
        default_factory=list, max_length=MAX_SUPPRESS,
        description="latents to switch off: ids (at `suppress_strength`) or {latent, strength} objects",
        examples=[[12, {"latent": 57, "strength": 0.5}]],
    )

    @field_validator("policy", mode="before")
    @classmethod
    def _json_name(cls, v: Any) -> Any:
        # numbers are read as item ids in `history` (coerce_numbers_to_str), never as a policy name
        if v is not None and not isinstance(v, str):
            raise ValueError("must be a policy name (a string) or null")
        return v

    @field_validator("explain", "exclude_seen", mode="before")
    @classmethod
    def _json_bool(cls, v: Any) -> Any:
        # a JSON body says true/false: 0, 1 or "yes" is a mistake (the query string's text is lax)
        if not isinstance(v, bool):
            raise ValueError("must be true or false")
        return v

    def suppress_strengths(self) -> dict[int, float]:
        """Latent -> strength of this request's suppression."""
        return merge_strengths([(e, None) if isinstance(e, int) else (e.latent, e.strength) for e in self.suppress],
                               self.suppress_strength)

    def options(self, audit: bool = False) -> RecommendOptions:
        return RecommendOptions.of(self, "body", audit)


# -- recommendation responses --------------------------------------------------------------------
class Contribution(BaseModel):
    latent: int
    contribution: float = Field(description="z_j * (W_dec[j] . item): this concept's share of the score")
    label: str | None = Field(None, description="the concept's short name (its description up to ' — '); "
                              "its description and confidence are in `active_latents`, once per latent")
    suppressed: bool = False


class ItemExplanation(BaseModel):
    """``bias + sum(contributions) + other + error == score`` (float32 rounding, < 1e-4)."""

    bias: float = Field(description="the SAE decoder bias' (the baseline's) share of the score: (1 - s) b_dec . item "
                        "when the baseline is suppressed with strength s")
    error: float = Field(description="what the SAE does not reconstruct (0 in reconstruction mode)")
    contributions: list[Contribution] = Field(default_factory=list, description="every active concept (with "
                                              "explain_top: the N largest), largest contribution first")
    other: float = Field(0.0, description="the contributions explain_top left out, summed (0 when all are listed)")


class RecommendedItem(BaseModel):
    rank: int = Field(description="1 = best")
    item_id: str
    title: str
    score: float = Field(description="the (steered) score x' . item")
    explanation: ItemExplanation | None = Field(default=None, description="only with explain=true")


class ActiveLatent(BaseModel):
    latent: int
    activation: float = Field(description="z_j before suppression")
    description: str | None = None
    confidence: float | None = None
    status: ConceptStatus | None = None
    suppressed: bool = False
    strength: float = Field(0.0, description="suppression strength applied (0 = none, 1 = removed)")


class SuppressedLatent(BaseModel):
    latent: int
    strength: float
    source: str = Field(description="'request' or 'policy:<name>'")
    active: bool = Field(description="whether it fired for this request (only then it changes scores)")


class SuppressedBaseline(BaseModel):
    strength: float = Field(description="share of the baseline (the SAE decoder bias) removed, in (0, 1]")
    source: str = Field(description="'request' or 'policy:<name>'")


class RecommendResponse(BaseModel):
    user_id: str | None = Field(None, description="null for POST (explicit history)")
    bundle_version: str
    bundle_hash: str
    k: int
    mode: SteerMode
    policy: str | None = None
    suppressed: list[SuppressedLatent] = Field(default_factory=list)
    baseline: SuppressedBaseline | None = Field(
        None, description=f"the baseline suppression applied ({BASELINE_DOC}); null = none"
    )
    items: list[RecommendedItem]
    active_latents: list[ActiveLatent] = Field(
        default_factory=list, description="concepts firing for this user (only with explain=true)"
    )


# -- concepts ------------------------------------------------------------------------------------
ConceptSort = Literal[
    "latent", "-latent", "frequency", "-frequency", "confidence", "-confidence"
]


class ConceptQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    q: str | None = Field(None, max_length=200, description="words that must all occur (description, attributes, top items)")
    status: ConceptStatus | None = None
    sort: ConceptSort = Field("latent", description="field to sort by; '-' for descending. By confidence, concepts "
                              "checked on fewer than 20 held-out positives come after the others (a 1.00 on 3 "
                              "samples is not a 0.95 on 50)")
    limit: int = Field(50, ge=1, le=1000)
    offset: int = Field(0, ge=0)


class ConceptSummary(BaseModel):
    latent: int
    status: ConceptStatus
    description: str | None = None
    confidence: float | None = None
    firing_frequency: float = 0.0
    attributes: list[str] = Field(default_factory=list)
    exemplars: list[str] = Field(default_factory=list, description="titles of the items that stand for the latent")
    n_positive: int | None = Field(None, description="held-out samples where it fires that the confidence was checked on")
    n_negative: int | None = Field(None, description="held-out samples where it does not fire, likewise")

    @classmethod
    def of(cls, c: Concept) -> "ConceptSummary":
        return cls(
            latent=c.latent,
            status=c.status,
            description=c.description,
            confidence=c.confidence,
            firing_frequency=c.firing_frequency,
            attributes=c.attributes,
            exemplars=c.exemplars,
            n_positive=c.detection.n_positive if c.detection else None,
            n_negative=c.detection.n_negative if c.detection else None,
        )


class ConceptList(BaseModel):
    total: int = Field(description="matches before limit/offset")
    concepts: list[ConceptSummary]


class ModelInfo(BaseModel):
    name: str
    kind: str
    input_kind: str
    d: int
    n_items: int
    n_users: int
    max_len: int | None = None


class SAEInfo(BaseModel):
    k: int
    n_latents: int
    expansion: int | None = None
    encoder: Encoder = Field(
        "topk", description="how activations are encoded: the trained TopK encoder, or matching pursuit "
        "over the decoder (recsae train --sae-encoder)")


class BundleInfo(BaseModel):
    version: str
    bundle_hash: str
    created: str
    recsae_version: str
    dataset: str | None = None
    model: ModelInfo
    sae: SAEInfo
    describer: str
    accepts_history: bool = Field(description="whether POST /recommend (explicit history) works")
    execution_provider: str = Field(description="ONNX Runtime provider of the encoder in this worker")
    hot_path: Literal["compiled", "python"] = Field("python", description="'compiled': this worker explains and writes "
                                                    "bodies in C (service/_hotpath.c); 'python': NumPy and orjson, slower")
    metrics: dict[str, Any] = Field(default_factory=dict, description="headline offline metrics")
    quality_warnings: list[str] = Field(
        default_factory=list,
        description="what the offline job found weak in this bundle's SAE (low NDCG@10 kept with the "
        "reconstruction in the path, high FVU, many dead latents); empty when none",
    )


# -- policies ------------------------------------------------------------------------------------
class PolicyIn(BaseModel):
    """A suppression policy: explicit latents and/or a text query resolved at creation, and/or a
    baseline strength (popularity lives there, not in a latent: docs/DEBIAS.md)."""

    model_config = ConfigDict(extra="forbid")

    latents: list[Annotated[int, Field(ge=0), NoBool] | LatentStrength] = Field(
        default_factory=list, max_length=MAX_SUPPRESS,
        description="latent ids (at `strength`) or {latent, strength} objects with their own strength",
        examples=[[12, {"latent": 57, "strength": 0.5}]],
    )
    query: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="words that must all occur in a concept's description/attributes; "
        "resolved to latents when the policy is stored",
    )
    strength: Strength01 = Field(1.0, ge=0.0, le=1.0, allow_inf_nan=False,
                                 description="1 = remove the concept, 0.5 = halve it")
    mode: SteerMode = "error"
    baseline: Strength01 = baseline_field(
        f"strength in [0, 1] with which to suppress the baseline, {BASELINE_DOC}; 0 = none. "
        "Applies whatever the bundle (every SAE has its own b_dec)."
    )
    description: str | None = Field(None, max_length=MAX_DESCRIPTION)
    name: PolicyNameStr | None = Field(
        None, description="optional; when given, must be the name in the path (a `recsae debias --save-policy` "
        "file is a body as is)")
    bundle_hash: str | None = Field(
        None, max_length=128,
        description="the bundle whose latent ids `latents` names (written by `recsae debias --save-policy`). "
        "On another bundle the PUT is refused unless the policy has a `query` (re-resolved here; its "
        "explicit ids are dropped) or `force=true` is given",
    )

    @model_validator(mode="after")
    def _needs_target(self) -> "PolicyIn":
        if not self.latents and not self.query and not self.baseline:
            raise ValueError("give 'latents', 'query' and/or a 'baseline' > 0")
        return self

    def latent_ids(self) -> list[int]:
        """The explicit latent ids, sorted, without duplicates."""
        return sorted({e if isinstance(e, int) else e.latent for e in self.latents})

    def own_strengths(self) -> dict[int, float]:
        """Explicit latents whose strength is not the policy's: given with their own, where a latent
        named twice (plain ids count at ``strength``) keeps the stronger, as in a request."""
        merged = merge_strengths([(e, self.strength) if isinstance(e, int) else (e.latent, e.strength)
                                  for e in self.latents])
        return {j: v for j, v in merged.items() if v != self.strength}


class Policy(BaseModel):
    name: str
    latents: list[int] = Field(description="resolved latent ids (explicit + query matches) for `bundle_hash`")
    explicit: list[int] = Field(default_factory=list, description="the latents given explicitly")
    query: str | None = None
    bundle_hash: str | None = Field(
        None,
        description="bundle the latents refer to; a replica serving another bundle re-resolves `query` "
        "against its own concepts and ignores the explicit latents (ids differ between SAEs)",
    )
    strength: float
    strengths: dict[int, float] = Field(
        default_factory=dict, description="explicit latents with their own strength (the others get `strength`)"
    )
    mode: SteerMode
    baseline: float = Field(0.0, description="baseline (SAE decoder bias) suppression strength; 0 = none")

    def strength_of(self, latent: int) -> float:
        return self.strengths.get(latent, self.strength)
    description: str | None = None
    created_at: float
    updated_at: float
    updated_by: str


class PolicyList(BaseModel):
    policies: list[Policy]


class AuditEntry(BaseModel):
    id: str
    ts: float
    who: str
    action: Literal["put", "delete", "reseed"]
    policy: str
    detail: str = ""


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(100, ge=1, le=1000, description="newest entries to return")


class PutPolicyQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: bool = Field(
        False, description="store the body's latent ids even though its `bundle_hash` names another bundle")


class NoParams(BaseModel):
    """Query of routes without parameters: unknown parameters are still rejected (422)."""

    model_config = ConfigDict(extra="forbid")


class AuditList(BaseModel):
    entries: list[AuditEntry] = Field(description="newest first")


class ErrorResponse(BaseModel):
    detail: Any = Field(description="a message, or FastAPI's list of field errors (loc, msg, type)")


# -- admin: bundle reload --------------------------------------------------------------------------
class ReloadRequest(BaseModel):
    """Body of ``POST /admin/reload`` (optional): which bundle directory to load next."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        None, min_length=1, max_length=4096,
        description="bundle directory on the server; default: the one being served (RECSAE_BUNDLE)",
    )


class ReloadResponse(BaseModel):
    path: str
    bundle_version: str
    bundle_hash: str
    previous_hash: str
    seconds: float = Field(description="time to load, verify and warm the new bundle")


# -- audit page: recent traffic and drift (audit token) ------------------------------------------
class RecentQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(50, ge=1, le=500, description="newest sampled answers to return")


class RecentItem(BaseModel):
    item_id: str
    title: str


class RecentEntry(BaseModel):
    id: str = Field(description="Redis stream id, or 'local-N' from this worker's in-process sample")
    ts: float
    user_id: str | None = Field(None, description="null for POST /recommend (explicit history)")
    policy: str | None = None
    suppressed: list[int] = Field(default_factory=list)
    baseline: float = Field(0.0, description="baseline suppression strength applied (0 = none)")
    active: list[int] = Field(default_factory=list, description="latents that fired")
    items: list[RecentItem] = Field(default_factory=list, description="top items (at most 10)")


class RecentList(BaseModel):
    entries: list[RecentEntry] = Field(description="newest first")


class DriftQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top: int = Field(15, ge=1, le=200, description="most drifted latents to return")
    sort: Literal["psi", "strength"] = Field(
        "psi", description="psi: by how their firing rate drifted (PSI term); strength: by how their mean "
        "activation when firing drifted, |ln(live / reference)| x live firing rate")


class DriftLatent(BaseModel):
    latent: int
    description: str | None = None
    reference_rate: float = Field(description="share of the bundle's reference users in which it fires")
    live_rate: float = Field(description="share of this worker's recent requests in which it fires")
    psi_term: float = Field(description="its share of the PSI (>= 0): the default sort key")
    strength_shift: float = Field(0.0, description="|ln(live / reference mean activation)| x live rate: the "
                                  "sort key of sort=strength")
    reference_mean_activation: float | None = Field(
        None, description="its mean activation over the reference users it fires for")
    live_mean_activation: float | None = Field(
        None, description="its mean activation over the recent requests it fired in; null if none: "
        "a shift here is drift in how strongly a concept is present, which firing rates miss for "
        "concepts that fire for almost everyone")


class DriftReport(BaseModel):
    window_requests: int = Field(description="requests in this worker's drift window")
    window_size: int
    jsd: float | None = Field(None, description="Jensen-Shannon divergence (log 2); null without traffic")
    psi: float | None = None
    latents: list[DriftLatent] = Field(default_factory=list, description="most drifted first")
    verdict: Literal["not-enough-traffic", "stable", "watch", "drifting"] = "not-enough-traffic"
    verdict_text: str = Field("", description="the verdict in words, with the thresholds it used")
    min_window: int = Field(0, description="live requests needed before a verdict")
    psi_noise: float | None = Field(None, description="PSI that sampling alone reaches (95th pct.) at this window")
    psi_watch: float | None = Field(None, description="PSI above which the verdict is 'watch' (noise + 0.10)")
    psi_drift: float | None = Field(None, description="PSI above which the verdict is 'drifting' (noise + 0.25)")
