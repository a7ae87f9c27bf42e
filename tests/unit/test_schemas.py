"""The wire format (service.schemas): validation rules, and the committed OpenAPI document."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="recsae-prom-"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

import pytest  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from recsae.concepts import Concept  # noqa: E402
from service.concepts import resolve_query, searchable_text  # noqa: E402
from service.schemas import (  # noqa: E402
    ConceptSummary,
    ItemExplanation,
    PolicyIn,
    RecommendQuery,
    RecommendRequest,
    RecommendResponse,
    parse_latent_list,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _loc(e: ValidationError) -> set[str]:
    return {str(err["loc"][0]) for err in e.errors()}


@pytest.mark.parametrize(
    "raw, want",
    [(None, {}), ("", {}), ("  ", {}), ("12", {12: 1.0}), ("12,57", {12: 1.0, 57: 1.0}),
     (" 3 , 1 ,3", {3: 1.0, 1: 1.0}), ("12,57:0.5", {12: 1.0, 57: 0.5}), ("7: .25 ,7:0.75,7:0.5", {7: 0.75}),
     ("4:1e-1", {4: 0.1})],
)
def test_parse_latent_list(raw, want):
    got = parse_latent_list(raw)
    assert got == want and list(got) == list(want)  # first-mention order; a repeated latent keeps the stronger


def test_parse_latent_list_default_strength_applies_only_where_none_is_given():
    assert parse_latent_list("1,2:0.9", default=0.3) == {1: 0.3, 2: 0.9}


@pytest.mark.parametrize("raw", ["a", "1,,2", "1,", "-1", "1.5", "1;2", "12345678901", ",1", "1:", "1:0",
                                 "1:1.5", "1:-0.5", "1:nan", "1:x", "1:0.5:0.5", "1:inf", "1:1e3"])
def test_parse_latent_list_rejects_malformed(raw):
    with pytest.raises(ValueError):
        parse_latent_list(raw)


def test_query_defaults_and_blank_options():
    q = RecommendQuery(user_id="7", policy="", mode="", suppress="")
    assert (q.k, q.explain, q.exclude_seen, q.policy, q.mode) == (10, False, True, None, None)
    assert q.suppress_strengths() == {}
    assert RecommendQuery(user_id="7", suppress="4,5:0.5", suppress_strength=0.2).suppress_strengths() == {4: 0.2, 5: 0.5}


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"k": 0}, "k"),
        ({"k": 101}, "k"),
        ({"suppress": "1,x"}, "suppress"),
        ({"policy": "has space"}, "policy"),
        ({"policy": "x" * 65}, "policy"),
        ({"mode": "fast"}, "mode"),
        ({"user_id": ""}, "user_id"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_query_rejections_name_the_field(kwargs, field):
    args = {"user_id": "1", **kwargs}
    with pytest.raises(ValidationError) as e:
        RecommendQuery(**args)
    assert field in _loc(e.value)


def test_body_history_rules():
    r = RecommendRequest(history=[50, "172"], suppress=[3, 3, 1])
    assert r.history == ["50", "172"]  # numbers are read as raw ids
    assert r.suppress_strengths() == {3: 1.0, 1: 1.0}
    mixed = RecommendRequest(history=["1"], suppress=[3, {"latent": 9, "strength": 0.4}, {"latent": 3, "strength": 0.5}],
                             suppress_strength=0.3)
    assert mixed.suppress_strengths() == {3: 0.5, 9: 0.4}
    for bad, field in [
        ({"history": []}, "history"),
        ({"history": ["1"] * 201}, "history"),
        ({"history": ["1"], "suppress": [-1]}, "suppress"),
        ({"history": ["1"], "suppress": [{"latent": 1, "strength": 0}]}, "suppress"),
        ({"history": ["1"], "suppress": [{"latent": 1, "strength": 1.5}]}, "suppress"),
        ({"history": ["1"], "suppress": [{"latent": 1}]}, "suppress"),
        ({"history": ["1"], "suppress": [{"latent": 1, "strength": 0.5, "x": 1}]}, "suppress"),
        ({"history": ["1"], "user_id": "3"}, "user_id"),
        ({"history": [""]}, "history"),
    ]:
        with pytest.raises(ValidationError) as e:
            RecommendRequest(**bad)
        assert field in _loc(e.value), bad
    assert len(RecommendRequest(history=["1"] * 200).history) == 200


def test_policy_needs_latents_or_query_and_bounded_strength():
    assert PolicyIn(latents=[1]).strength == 1.0
    mixed = PolicyIn(latents=[5, {"latent": 2, "strength": 0.3}, {"latent": 2, "strength": 0.6}], strength=0.9)
    assert mixed.latent_ids() == [2, 5] and mixed.own_strengths() == {2: 0.6}
    assert PolicyIn(latents=[2, {"latent": 2, "strength": 0.5}], strength=0.9).own_strengths() == {}  # 0.9 is stronger
    for bad in ({"latent": 2, "strength": 0}, {"latent": 2, "strength": 2}, {"latent": -1, "strength": 0.5}, {"latent": 2}):
        with pytest.raises(ValidationError):
            PolicyIn(latents=[bad])
    assert PolicyIn(query="horror").mode == "error"
    for bad in [{}, {"latents": []}, {"latents": [1], "strength": 1.5}, {"latents": [1], "mode": "x"},
                {"latents": [1], "extra": 1}]:
        with pytest.raises(ValidationError):
            PolicyIn(**bad)


def test_baseline_strength_is_a_bounded_finite_option_and_can_be_a_whole_policy():
    assert RecommendQuery(user_id="1").suppress_baseline == 0.0
    assert RecommendQuery(user_id="1", suppress_baseline="0.4").suppress_baseline == 0.4
    assert RecommendRequest(history=["1"], suppress_baseline=1).suppress_baseline == 1.0
    for bad in ("1.5", "-0.1", "nan", "inf", "x"):
        with pytest.raises(ValidationError) as e:
            RecommendQuery(user_id="1", suppress_baseline=bad)
        assert _loc(e.value) == {"suppress_baseline"}, bad
    only = PolicyIn(baseline=0.4)
    assert only.latents == [] and only.query is None and only.baseline == 0.4
    assert PolicyIn(latents=[1]).baseline == 0.0
    for bad in [{"baseline": 0}, {"baseline": 1.5}, {"latents": [1], "baseline": float("nan")}]:
        with pytest.raises(ValidationError):
            PolicyIn(**bad)


def test_response_round_trips_and_explanation_defaults():
    r = RecommendResponse(bundle_version="v", bundle_hash="h", k=1, mode="error", items=[])
    assert r.suppressed == [] and r.active_latents == [] and r.user_id is None and r.baseline is None
    assert RecommendResponse.model_validate_json(r.model_dump_json()) == r
    assert ItemExplanation(bias=0.1, error=0.0).contributions == []


def _concept(j, description, status="described", attributes=(), top=()):
    return Concept.model_validate(
        {"latent": j, "status": status, "description": description, "attributes": list(attributes),
         "evidence": {"top_items": list(top)}}
    )


def test_policy_query_resolution_uses_described_concepts_only():
    cs = [
        _concept(0, "Horror films of the 1980s", attributes=["genre:Horror"]),
        _concept(1, "Children's animation", attributes=["genre:Children's", "genre:Animation"]),
        _concept(2, None, status="undescribed", top=["Horror Movie (1980)"]),
        _concept(3, "Slasher HORROR", attributes=[]),
    ]
    assert resolve_query(cs, "horror") == [0, 3]
    assert resolve_query(cs, "genre:animation") == [1]
    assert resolve_query(cs, "horror 1980s") == [0]
    assert resolve_query(cs, "western") == []
    assert "horror movie" in searchable_text(cs[2])  # /concepts?q= also searches evidence


def test_openapi_document_is_current():
    """service/openapi.json must equal what the code generates (regenerate: python -m service.openapi)."""
    from service.openapi import PATH, render

    assert PATH.exists(), "service/openapi.json is missing: run `python -m service.openapi`"
    assert PATH.read_text() == render(), "service/openapi.json is stale: run `python -m service.openapi`"


def test_service_import_pulls_no_torch_or_training_code():
    code = (
        "import sys, service.service, service.openapi\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.') or m in "
        "('recsae.pipeline', 'recsae.train', 'recsae.sae', 'models') or m.startswith('models.'))\n"
        "print(','.join(bad))\n"
    )
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"the service imports training modules: {out.stdout.strip()}"


def test_concept_summaries_carry_exemplars_and_the_dictionary_keeps_them():
    c = Concept(latent=3, status="described", description="Britney Spears, Rihanna — tags: pop",
                attributes=["last:item:7"], headline=["next:tag:pop"], exemplars=["Britney Spears", "Rihanna"],
                duplicates=[9])  # fmt: skip
    s = ConceptSummary.of(c)
    assert s.exemplars == ["Britney Spears", "Rihanna"]
    assert ConceptSummary.model_validate_json(s.model_dump_json()) == s
    assert Concept.model_validate_json(c.model_dump_json()) == c
    assert "exemplars" in ConceptSummary.model_json_schema()["properties"]
