"""Choosing a policy from a sweep (blind: on dev-stage users, or on half the test users) and writing it
as the file the service's ``PUT /admin/policies/{name}`` takes as is."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Sequence

from pydantic import ValidationError

from recsae import ConfigError
from recsae.debias.measures import COMPARATOR, POLICY_METHODS
from recsae.policy import MAX_DESCRIPTION, PolicyFile
from recsae.policy import POLICY_NAME_RE as POLICY_NAME

POLICY_KEYS = tuple(PolicyFile.model_fields)
POLICY_REQUIRED = tuple(n for n, f in PolicyFile.model_fields.items() if f.is_required())
"""The file's keys, from the one policy model (``recsae.policy.PolicyFile``, which the service's
``PUT /admin/policies/{name}`` accepts as is)."""


def _key(row: dict) -> tuple:
    """A sweep point: (n latents, their strength, baseline strength)."""
    return row["n"], row["strength"], row.get("baseline", 0.0)


def _try_choice(result: dict, method: str, max_loss: float, target_cut: float | None) -> dict | None:
    try:
        return choose_policy(result, method, max_loss, target_cut)
    except ConfigError:
        return None


def check_targets(result: dict, min_cut: float = 1 / 3, max_loss: float = 0.10) -> dict:
    """Per method: the best test bias cut within ``max_loss`` relative NDCG loss over the sweep;
    whether the method beats its random comparator (lower |bias|, :data:`COMPARATOR`) at every
    point of the sweep; and the test numbers of the point chosen on the dev stage
    (:func:`choose_policy`), with the re-ranking baseline's cut at the same test NDCG."""
    b0 = abs(result["base"]["test"]["bias"])
    n0 = result["base"]["test"]["ndcg"]
    rows = result["rows"]

    def cut(bias: float) -> float:
        return 1 - abs(bias) / b0 if b0 > 0 else 0.0

    def on_test(row: dict | None) -> dict | None:
        return None if row is None else {
            **dict(zip(("n", "strength", "baseline"), _key(row))),
            "test_cut": cut(row["test"]["bias"]),
            "test_ndcg_loss": 1 - row["test"]["ndcg"] / n0 if n0 > 0 else None,
            "rerank_cut_at_matched_ndcg": cut(row["rerank_bias_at_matched_ndcg"]),
            "cut_target_met": bool(cut(row["test"]["bias"]) >= min_cut and row["test"]["ndcg"] >= (1 - max_loss) * n0),
        }

    out: dict = {}
    for method in [m for m in COMPARATOR if any(r["method"] == m for r in rows)]:
        rand = {_key(r): r for r in rows if r["method"] == COMPARATOR[method]}
        mine = [r for r in rows if r["method"] == method]
        ok = [r for r in mine if r["test"]["ndcg"] >= (1 - max_loss) * n0]
        best = min(ok, key=lambda r: abs(r["test"]["bias"]), default=None)
        beats = [abs(r["test"]["bias"]) < abs(rand[_key(r)]["test"]["bias"]) for r in mine if _key(r) in rand]
        vs_rerank = [abs(r["test"]["bias"]) < abs(r["rerank_bias_at_matched_ndcg"]) for r in mine
                     if not math.isnan(r["rerank_bias_at_matched_ndcg"])]
        dev, dev_cut = (_try_choice(result, method, max_loss, target) for target in (None, min_cut))
        out[method] = {
            "comparator": COMPARATOR[method],
            "best_cut_within_loss": cut(best["test"]["bias"]) if best else 0.0,
            "best_point": dict(zip(("n", "strength", "baseline"), _key(best))) if best else None,
            "best_ndcg_loss": (1 - best["test"]["ndcg"] / n0) if best and n0 > 0 else None,
            "best_rerank_cut_at_matched_ndcg": cut(best["rerank_bias_at_matched_ndcg"]) if best else None,
            "cut_target_met": bool(best and cut(best["test"]["bias"]) >= min_cut),
            "beats_random_everywhere": bool(beats) and all(beats),
            "beats_random_points": f"{sum(beats)}/{len(beats)}",
            "beats_rerank_at_matched_ndcg_points": f"{sum(vs_rerank)}/{len(vs_rerank)}",
            "dev_choice": on_test(dev),
            "dev_choice_min_loss": on_test(dev_cut),
        }
    ok = [p for p in result["rerank"] if p["ndcg"] >= (1 - max_loss) * n0]
    best = min(ok, key=lambda p: abs(p["bias"]), default=None)
    out["rerank"] = {"best_cut_within_loss": cut(best["bias"]) if best else 0.0,
                     "best_lambda": best["lambda"] if best else None}
    out["min_cut"], out["max_ndcg_loss"] = min_cut, max_loss
    return out


# =============================================================================================
# 5. Policies
# =============================================================================================
def choose_policy(result: dict, method: str | Sequence[str] = "greedy", max_ndcg_loss: float = 0.10,
                  target_cut: float | None = None) -> dict:
    """The dev-stage choice among the sweep points of ``method`` (a name, several, or ``"best"`` =
    :data:`POLICY_METHODS`). Without ``target_cut``: the lowest dev |bias| whose dev NDCG@k lost
    at most ``max_ndcg_loss`` (relative). With it: the highest dev NDCG among points that cut dev
    |bias| by at least ``target_cut`` (the cheapest way to a stated cut). Ties -> fewer latents,
    lower strength, lower baseline. Chosen on the dev stage, so its test numbers are not tuned on."""
    methods = POLICY_METHODS if method == "best" else (method,) if isinstance(method, str) else tuple(method)
    rows = [r for r in result["rows"] if r["method"] in methods]
    if not rows:
        raise ConfigError(f"the sweep has no {'/'.join(methods)} rows; run it with that method")
    sel = result["settings"]["select_stage"]
    base = result["base"][sel]
    cands = {(*_key(r), i): (abs(r[sel]["bias"]), r[sel]["ndcg"]) for i, r in enumerate(rows)}
    key = pick_point(cands, abs(base["bias"]), base["ndcg"], max_ndcg_loss, target_cut)
    if key is None:
        raise ConfigError(
            f"no {'/'.join(methods)} point cuts the dev-stage bias by {target_cut:.0%}; sweep higher strengths or "
            "more latents, or lower --target-cut" if target_cut is not None else
            f"no {'/'.join(methods)} point keeps dev NDCG within {max_ndcg_loss:.0%} of the original")
    best = rows[key[-1]]
    rule = (f"least dev NDCG loss cutting the bias by >= {target_cut:.0%}" if target_cut is not None
            else f"lowest dev bias within {max_ndcg_loss:.0%} dev NDCG loss")
    return {**best, "improves": abs(best[sel]["bias"]) < abs(base["bias"]), "rule": rule}


def pick_point(cands: dict[tuple, tuple[float, float]], bias0: float, ndcg0: float, max_ndcg_loss: float,
               target_cut: float | None = None) -> tuple | None:
    """The policy rules over candidate points ``key -> (|bias|, NDCG)`` measured on some users
    whose unsuppressed |bias| and NDCG are ``bias0``, ``ndcg0``. Without ``target_cut``: the lowest
    |bias| whose NDCG lost at most ``max_ndcg_loss`` (relative); with it: the highest NDCG among
    points cutting |bias| by at least ``target_cut``. Ties -> the smaller key. None: no point
    qualifies."""
    if target_cut is None:
        ok = [k for k, (_, n) in cands.items() if n >= (1 - max_ndcg_loss) * ndcg0]
        return min(ok, key=lambda k: (round(cands[k][0], 12), k), default=None)
    ok = [k for k, (b, _) in cands.items() if bias0 > 0 and 1 - b / bias0 >= target_cut]
    return min(ok, key=lambda k: (-round(cands[k][1], 12), k), default=None)


def budget_edge_warning(result: dict, point: dict, max_ndcg_loss: float, edge: float = 0.8) -> str | None:
    """A warning when a policy chosen as "lowest bias within the NDCG budget" used most of the
    budget on the dev stage: the loss of one stage is noisy (±9 points with ~1k users), so such a
    point often exceeds the budget on new users (docs/DEBIAS.md); a stated cut is steadier."""
    sel = result["settings"]["select_stage"]
    n0 = result["base"][sel]["ndcg"]
    loss = 1 - point[sel]["ndcg"] / n0 if n0 > 0 else 0.0
    if max_ndcg_loss <= 0 or loss < edge * max_ndcg_loss:
        return None
    return (f"the chosen point loses {loss:.1%} of {sel} NDCG@{result['settings']['top_k']}, at the edge of the "
            f"{max_ndcg_loss:.0%} budget: on new users it may exceed it; --target-cut FRACTION chooses by the bias cut "
            "instead, which is measured far more tightly")


def policy_document(name: str, point: dict, result: dict) -> dict:
    """The policy file body: ``name, latents, strength, mode, baseline, bundle_hash, description``
    (the body of ``PUT /admin/policies/{name}`` as is)."""
    if not POLICY_NAME.match(name):
        raise ConfigError(f"policy name {name!r}: use letters, digits, '_.-' (at most 64, starting with a letter or digit)")
    t0, t1 = result["base"]["test"], point["test"]
    src = result.get("source", {})
    k = result["settings"]["top_k"]
    beta = float(point.get("baseline", 0.0))
    what = ([f"{len(point['latents'])} latents at strength {point['strength']:g}"] if point["latents"] else []) + (
        [f"the baseline (SAE decoder bias) at {beta:g}"] if beta else [])
    desc = (
        f"{result['bias']} de-bias ({point['method']}, chosen on dev-stage users: "
        f"{point.get('rule', 'lowest dev bias within the NDCG budget')}): suppress "
        f"{' and '.join(what) or 'nothing'}; test "
        f"{result['measure']['label']} {t0['bias']:.3f}->{t1['bias']:.3f}, NDCG@{k} "
        f"{t0['ndcg']:.4f}->{t1['ndcg']:.4f}; bundle {src.get('version', '?')} "
        f"({str(src.get('bundle_hash', '?'))[:12]})"
    )
    return {
        "name": name,
        "latents": [int(j) for j in point["latents"]],
        "strength": float(point["strength"]) if point["latents"] else 1.0,
        "mode": result["settings"]["mode"],
        "baseline": beta,
        "bundle_hash": src.get("bundle_hash"),
        "description": desc[:MAX_DESCRIPTION],
    }


def policy_json(doc: dict) -> str:
    """The policy as indented JSON with the latent list on one line."""
    return json.dumps({**doc, "latents": "\0"}, indent=2).replace('"\\u0000"', json.dumps(doc["latents"]))


def check_policy_dir(folder: str | Path) -> Path:
    """Refuse a folder inside a bundle: bundles are hash-verified, policies live outside them."""
    folder = Path(folder)
    for p in [folder.resolve(), *folder.resolve().parents]:
        if (p / "manifest.json").is_file() and (p / "sae").is_dir():
            raise ConfigError(f"{folder} is inside bundle {p}: bundles are hash-verified; use another --policy-dir")
    return folder


def save_policy(doc: dict, folder: str | Path) -> Path:
    """Write ``<folder>/<name>.json`` atomically; refuses a folder inside a bundle (bundles are
    hash-verified: an extra file there would be silently ignored or break verification)."""
    check_policy(doc, "policy")
    folder = check_policy_dir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{doc['name']}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{doc['name']}.", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(policy_json(doc) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_policy(path: str | Path) -> dict:
    """Read and check a policy file written by :func:`save_policy`."""
    doc = json.loads(Path(path).read_text())
    check_policy(doc, str(path))
    return doc


def check_policy(doc: object, where: str) -> None:
    """Refuse a document that is not a valid policy file, naming the first bad key."""
    try:
        PolicyFile.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(v) for v in err["loc"]) or "the file"
        raise ConfigError(f"{where}: {key}: {err['msg']} (a policy file has the keys {POLICY_KEYS}; "
                          "'baseline', 'bundle_hash' optional)") from None
