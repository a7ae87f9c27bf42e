"""Segments by a user attribute (#20 item 4): a bundle built from data with user attributes
(MovieLens' gender, age, occupation) carries them in ``users.npz``; the audit's segment compare
takes ``{"user_attribute": "gender:F"}`` and its groups are exactly the users with it."""

from __future__ import annotations

import numpy as np
import pytest


def test_user_table_keeps_attributes_and_reads_old_files(tmp_path):
    from recsae.bundle import UserTable

    t = UserTable.from_histories(np.array(["a", "b", "c"]), [np.array([1, 2]), np.array([3]), np.array([0])])
    old = tmp_path / "old.npz"
    t.save(old)
    assert UserTable.load(old).feature_names is None  # a bundle of data without user attributes
    with_f = t.with_features(["gender:F", "gender:M"], np.array([[1, 0], [0, 1], [1, 0]]))
    with_f.save(tmp_path / "new.npz")
    back = UserTable.load(tmp_path / "new.npz")
    assert list(back.feature_names) == ["gender:F", "gender:M"]
    assert back.features.dtype == bool and back.features[:, 0].tolist() == [True, False, True]
    assert back.history(0).tolist() == [1, 2]
    with pytest.raises(ValueError, match="do not match"):
        t.with_features(["x"], np.ones((2, 1)))


def test_segment_by_gender_on_ml100k_is_the_users_with_it(small_bundle, data_dir):
    from service.config import Settings
    from service.core import ClientError, Core
    from service.segments import SegmentRequest, compare

    # the truth, from the dataset's own user file
    gender = {}
    for line in (data_dir / "ml-100k" / "u.user").read_text(encoding="latin-1").splitlines():
        u, _age, g, _occ, _zip = line.split("|")
        gender[u] = g
    core = Core(Settings(bundle=str(small_bundle), redis_url="", warmup=False))
    core.start()
    try:
        users = core.bundle.users
        assert users.feature_names is not None and "gender:F" in list(users.feature_names)
        r = compare(core, SegmentRequest(a={"user_attribute": "gender:F"}, b={"user_attribute": "gender:M"}, top=5))
        n_f = sum(gender[str(u)] == "F" for u in users.user_ids)
        assert (r.a.n, r.b.n) == (n_f, len(users.user_ids) - n_f)
        assert r.a.label == "users with gender:F"
        # rates as the users' own codes say
        from service.audit_routes import user_codes

        codes = user_codes(core)
        rows = np.array([gender[str(u)] == "F" for u in users.user_ids])
        top = r.concepts[0]
        fires = (codes.idx == top.latent) & (codes.acts > 0)
        assert top.rate_a == pytest.approx(fires[rows].any(axis=1).mean(), abs=1e-4)
        assert top.rate_b == pytest.approx(fires[~rows].any(axis=1).mean(), abs=1e-4)
        with pytest.raises(ClientError, match="unknown user attribute"):
            compare(core, SegmentRequest(a={"user_attribute": "gender:X"}))
    finally:
        core.close()
