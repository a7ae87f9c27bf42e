"""One policy model and one steering rule for the service and ``recsae debias`` (issue 18, item 3)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from recsae import debias as D
from recsae.policy import POLICY_NAME, PolicyFile, steering

DOC = {"name": "less-pop_1", "latents": [3, 7], "strength": 0.5, "mode": "error", "baseline": 0.2,
       "bundle_hash": "abc123", "description": "popularity de-bias"}


def test_the_policy_file_is_a_put_body_as_is_and_both_refuse_the_same_names():
    from service.schemas import POLICY_NAME as SERVICE_NAME
    from service.schemas import PolicyIn

    assert SERVICE_NAME is POLICY_NAME
    assert list(D.POLICY_KEYS) == list(PolicyFile.model_fields) and set(D.POLICY_REQUIRED) < set(D.POLICY_KEYS)
    body = PolicyIn.model_validate(PolicyFile.model_validate(DOC).model_dump())
    assert (body.name, body.latent_ids(), body.strength, body.baseline) == ("less-pop_1", [3, 7], 0.5, 0.2)
    for bad in ("../evil", "", "x" * 65, "-lead"):
        with pytest.raises(ValidationError):
            PolicyFile.model_validate({**DOC, "name": bad})
        with pytest.raises(ValidationError):
            PolicyIn.model_validate({**DOC, "name": bad})


def test_one_steer_mode_and_encoder_for_kernel_service_and_cli():
    from recsae.cli import build_parser
    from recsae.kernel import ENCODERS, SteerMode
    from service import schemas

    assert schemas.SteerMode is SteerMode
    train = build_parser().parse_args(["train"])
    assert train.sae_encoder == ENCODERS[0] == "topk"
    with pytest.raises(ValidationError):
        schemas.SAEInfo.model_validate({"n_latents": 4, "k": 2, "d": 2, "encoder": "dense"})


@pytest.mark.parametrize("bad", [{"baseline": 1.5}, {"strength": -0.1}, {"latents": [-1]}, {"mode": "both"},
                                 {"extra": 1}, {"latents": ["3"]}])
def test_debias_refuses_a_policy_file_the_model_refuses(tmp_path, bad):
    from recsae import ConfigError

    key = next(iter(bad))
    with pytest.raises(ConfigError, match=key):
        D.save_policy({**DOC, **bad}, tmp_path)
    assert D.load_policy(D.save_policy(DOC, tmp_path)) == DOC


def test_the_steering_rule_stronger_wins_ties_go_to_the_request_mode_request_then_policy():
    s = steering("p", {1: 0.5, 2: 1.0, 4: 0.3}, 0.2, "reconstruction", suppress={2: 0.3, 3: 1.0, 4: 0.3},
                 suppress_baseline=0.2, mode=None)
    assert s.strengths == {1: 0.5, 2: 1.0, 3: 1.0, 4: 0.3}
    assert s.sources == {1: "policy:p", 2: "policy:p", 3: "request", 4: "request"}
    assert (s.baseline, s.baseline_source, s.mode) == (0.2, "request", "reconstruction")
    assert steering("p", {1: 0.5}, 0.4, "reconstruction", {}, 0.1, "error")[2:] == (0.4, "policy:p", "error")
    none = steering()
    assert (none.strengths, none.baseline, none.baseline_source, none.mode) == ({}, 0.0, None, "error")
