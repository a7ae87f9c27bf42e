"""The settings of one de-bias experiment, and the single source of the ``recsae debias`` flags
(help, choices and defaults in the fields' metadata: :func:`recsae.config.add_flags`)."""

from __future__ import annotations

from dataclasses import dataclass

from recsae.config import STEER_MODES, option
from recsae.debias.measures import BIASES, DEFAULT_BASELINE_STRENGTHS, DEFAULT_COUNTS, POLICY_METHODS
from recsae.kernel import SteerMode


def csv(values: tuple) -> str:
    """A default sweep as the flag takes it: ``1,2,4`` (parsed by ``recsae debias``)."""
    return ",".join(f"{v:g}" for v in values)


@dataclass
class DebiasConfig:
    """What ``run_experiment`` sweeps and how ``choose_policy`` picks (their defaults are these)."""

    bias: str = option("popularity", (
        "popularity = head items' share of the top 10; gender = the gap between female and male users' "
        "lists (needs user gender features, e.g. ml-100k)"), choices=BIASES)
    counts: tuple[int, ...] = option(DEFAULT_COUNTS, "numbers of suppressed latents to sweep",
                                     cli_default=csv(DEFAULT_COUNTS))
    # None: DEFAULT_STRENGTHS, or RESERVED_STRENGTHS for a bundle trained with a reserved latent
    strengths: tuple[float, ...] | None = option(None, (
        "suppression strengths to sweep, in [0, 1] (default 0.5,1.0; 0.1 to 1.0, in steps of 0.05 between 0.3 "
        "and 0.7, for a bundle trained with --sae-reserve)"))
    baseline_strengths: tuple[float, ...] = option(DEFAULT_BASELINE_STRENGTHS, (
        "baseline (SAE decoder bias: what all users share, chiefly popularity) suppression "
        "strengths to sweep, in (0, 1]; empty = latents only"), cli_default=csv(DEFAULT_BASELINE_STRENGTHS))
    mode: SteerMode = option("error", (
        "error = subtract the suppressed latents' share from the representation, keeping the SAE's "
        "error (nothing suppressed: unchanged); reconstruction = decode the scaled latents, dropping "
        "the error (the paper's)"), choices=STEER_MODES)
    seeds: int = option(5, "random-latent draws per sweep point", type=int)
    min_freq: float = option(0.005, "candidates fire for at least this share of dev-stage users", type=float)
    max_ndcg_loss: float = option(0.10, "relative dev NDCG@10 loss allowed (greedy selection and policy choice)",
                                  type=float)
    method: str = option("best", (
        "method the saved policy uses; best = lowest dev-stage bias within the NDCG budget among "
        "greedy, baseline, baseline+greedy"), choices=("best", *POLICY_METHODS))
    target_cut: float | None = option(None, (
        "choose the policy as the dev point with the least NDCG loss that cuts the bias by at least "
        "FRACTION (e.g. 0.33) instead of the lowest bias within --max-ndcg-loss"), type=float, metavar="FRACTION")

