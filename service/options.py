"""A recommendation request's options, parsed and validated once.

``GET /recommend``'s query (``RecommendQuery``) and ``POST /recommend``'s body
(``RecommendRequest``) validate the wire input; ``.options()`` turns either into this typed,
immutable object, which ``Core`` carries through batching, steering and explanation. What needs
the bundle (latent ids in range, the policy known) is checked by ``Core``, once per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping

from recsae.kernel import SteerMode

Where = Literal["query", "body"]


def _frozen(m: Mapping[int, float]) -> Mapping[int, float]:
    return m if isinstance(m, MappingProxyType) else MappingProxyType(dict(m))


@dataclass(frozen=True, slots=True)
class RecommendOptions:
    """What one recommendation request asks for, validated: built by ``RecommendQuery.options()``
    or ``RecommendRequest.options()`` (or directly, in tests and benchmarks)."""

    k: int = 10
    """number of items to return"""
    explain: bool = False
    """add active concepts and per-item score decompositions"""
    explain_top: int | None = None
    """list only each item's N largest contributions (the rest summed in ``other``); None: all"""
    suppress: Mapping[int, float] = field(default_factory=dict)
    """latent -> strength in (0, 1] of the request's own suppression (a latent named twice
    already merged to the stronger)"""
    policy: str | None = None
    """a stored suppression policy's name"""
    exclude_seen: bool = True
    mode: SteerMode | None = None
    """None: the policy's mode, else 'error'"""
    suppress_baseline: float = 0.0
    """strength in [0, 1] with which the baseline (b_dec) is removed"""
    where: Where = "query"
    """where the options came from: the first element of an error's ``loc``"""
    audit: bool = False
    """an auditor's request (header ``X-RecSAE-Audit: 1``, the audit page): kept out of drift and
    of the recent-traffic sample, which describe live traffic"""

    def __post_init__(self) -> None:
        object.__setattr__(self, "suppress", _frozen(self.suppress))

    @classmethod
    def of(cls, r: Any, where: Where, audit: bool = False) -> "RecommendOptions":
        """From a validated ``RecommendQuery`` (where='query') or ``RecommendRequest`` ('body')."""
        return cls(k=r.k, explain=r.explain, explain_top=r.explain_top, suppress=r.suppress_strengths(),
                   policy=r.policy,
                   exclude_seen=r.exclude_seen, mode=r.mode or None, suppress_baseline=r.suppress_baseline,
                   where=where, audit=audit)
