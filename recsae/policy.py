"""A suppression policy, and the one rule that turns a policy and a request into a steering.

Shared by the service (``?policy=``, ``PUT /admin/policies/{name}``) and ``recsae debias`` (which
measures a policy and writes its file), so a saved policy does in the service exactly what the
de-bias report measured: the same name rule, the same file model, the same combination rule and
the same kernel call (:meth:`recsae.kernel.SAEKernel.steer`). NumPy and Pydantic only.
"""

from __future__ import annotations

import re
from typing import Annotated, Mapping, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from recsae.kernel import ENCODERS, Encoder, SteerMode

__all__ = ["ENCODERS", "MAX_DESCRIPTION", "POLICY_NAME", "POLICY_NAME_RE", "Encoder", "PolicyFile", "SteerMode",
           "Steering", "steering"]

POLICY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""A policy name: letters, digits, '_.-', at most 64, starting with a letter or digit (it becomes a
file name and a Redis hash field)."""
POLICY_NAME_RE = re.compile(POLICY_NAME)
MAX_DESCRIPTION = 500


class PolicyFile(BaseModel):
    """The policy file ``recsae debias --save-policy`` writes; the body of ``PUT
    /admin/policies/{name}`` as is (the service's ``PolicyIn`` accepts every valid one: a test checks).

    ``baseline`` and ``bundle_hash`` are optional (files written before they existed lack them:
    baseline 0, no bundle check); ``bundle_hash`` is the bundle whose latent ids ``latents`` names.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=POLICY_NAME)
    latents: list[Annotated[int, Field(ge=0, strict=True)]]
    strength: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    mode: SteerMode
    baseline: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    bundle_hash: str | None = Field(None, max_length=128)
    description: str = Field(max_length=MAX_DESCRIPTION)


class Steering(NamedTuple):
    """What :meth:`SAEKernel.steer` gets, and where each part came from (for the response)."""

    strengths: dict[int, float]
    sources: dict[int, str]
    baseline: float
    baseline_source: str | None
    mode: SteerMode


def steering(
    policy_name: str | None = None,
    policy_latents: Mapping[int, float] | None = None,
    policy_baseline: float = 0.0,
    policy_mode: SteerMode | None = None,
    suppress: Mapping[int, float] | None = None,
    suppress_baseline: float = 0.0,
    mode: SteerMode | None = None,
) -> Steering:
    """A policy's suppression combined with a request's: for each latent, and for the baseline, the
    stronger of the two (a tie goes to the request); the request's mode, else the policy's, else
    ``error``. A policy alone (``recsae debias`` measuring one) is steered exactly as it is served."""
    strengths: dict[int, float] = {}
    sources: dict[int, str] = {}
    for j, s in (policy_latents or {}).items():
        strengths[j], sources[j] = s, f"policy:{policy_name}"
    for j, s in (suppress or {}).items():
        if s >= strengths.get(j, 0.0):
            strengths[j], sources[j] = float(s), "request"
    baseline, baseline_source = 0.0, None
    if policy_baseline > 0:
        baseline, baseline_source = float(policy_baseline), f"policy:{policy_name}"
    if suppress_baseline > 0 and suppress_baseline >= baseline:
        baseline, baseline_source = float(suppress_baseline), "request"
    return Steering(strengths, sources, baseline, baseline_source, mode or policy_mode or "error")
