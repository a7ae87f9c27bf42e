"""The compiled hot path (service/_hotpath.c) answers as the NumPy kernel and orjson do.

``explain``: ground truth is ``recsae.kernel.SAEKernel.explain`` on random SAEs, codes,
suppression and catalogues (and the service's NumPy path, ``Core._explain_numpy``, fills the same
table and order). ``items``: ground truth is the Python writer, the items as dicts (``Core.finish``
without the compiled writer) serialised by orjson, whose bytes a service test already ties to
the Pydantic response model's own."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsae.bundle import PackedStrings
from recsae.kernel import Codes, SAEKernel
from service import hotpath
from service.concepts import describe
from service.core import Core, _Explained
from service.schemas import ConceptSummary

needs_compiled = pytest.mark.skipif(hotpath.compiled_items is None, reason="not built: test_the_install_built_it fails")


def test_the_install_built_it():
    """``make install`` builds it (setup.py marks it optional, so a broken build would otherwise
    only show as a slower service)."""
    assert hotpath.KIND == "compiled" and hotpath.compiled_items is not None and hotpath.compiled_explain is not None


def python_body(ids, scores, item_ids, titles, ex, described, strengths, top=0) -> bytes:
    """``items`` and ``active_latents`` as ``Core.finish`` builds them without the compiled
    writer (its own ``_active`` and ``_explain_items``), serialised by orjson."""
    items = [{"rank": r + 1, "item_id": item_ids[i], "title": titles[i], "score": s, "explanation": None}
             for r, (i, s) in enumerate(zip(ids, scores))]
    active_out = []
    if ex is not None:
        active = [d.summary.latent for d in described]
        active_out, sup = Core._active(ex, active, strengths, described)
        Core._explain_items(ex, [d.contribution[s] for d, s in zip(described, sup)], items, top)
    return orjson.dumps({"items": items, "active_latents": active_out})


def compiled_body(ids, scores, item_ids, titles, ex, described, strengths, top=0) -> bytes:
    items, active = hotpath.compiled_items(
        ids, scores, item_ids, titles, ex.table if ex else None, ex.order if ex else None, [d.json for d in described],
        [strengths.get(d.summary.latent, 0.0) for d in described] if strengths and ex else None, top)
    return orjson.dumps({"items": orjson.Fragment(items), "active_latents": orjson.Fragment(active)})


def explained(table: np.ndarray, order: np.ndarray, n_active: int) -> _Explained:
    return _Explained(table, order, table[-1, :n_active].tolist())


def rounded(values) -> np.ndarray:
    return np.round(np.asarray(values, dtype=np.float64), 6)  # as service.core rounds the wire's numbers


wire_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # any str orjson writes
wire_number = st.one_of(
    st.floats(-1e3, 1e3), st.floats(-1e-4, 1e-4), st.floats(-2e9, 2e9), st.integers(-20, 20).map(lambda m: m / 1e6),
    st.sampled_from([0.0, -0.0, 1e-6, -9e-6, 1e-5, 999999999.999999, 1e9, 1e15]),
)
concept = st.builds(
    lambda j, status, description, confidence: describe(j, ConceptSummary(
        latent=j, status=status, description=description, confidence=confidence)),
    st.integers(0, 1 << 20), st.sampled_from(["described", "undescribed", "dead"]), st.none() | wire_text,
    st.none() | st.floats(0, 1),
)


@needs_compiled
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_same_bytes_as_the_python_writer_for_any_strings_and_numbers(data):
    """Titles, ids, labels and descriptions of any text; numbers as the kernel rounds them (and,
    for strengths, any in (0, 1]); some rows firing fewer than k latents; some suppressed; some
    listing only their top contributions (explain_top, the rest summed in `other`)."""
    n_catalog = data.draw(st.integers(1, 30))
    item_ids = data.draw(st.lists(wire_text, min_size=n_catalog, max_size=n_catalog))
    titles = data.draw(st.lists(wire_text, min_size=n_catalog, max_size=n_catalog))
    n = data.draw(st.integers(0, min(n_catalog, 12)))
    ids = data.draw(st.lists(st.integers(0, n_catalog - 1), min_size=n, max_size=n))
    scores = rounded(data.draw(st.lists(wire_number, min_size=n, max_size=n))).tolist()
    if not data.draw(st.booleans()):
        assert compiled_body(ids, scores, item_ids, titles, None, [], {}) == \
            python_body(ids, scores, item_ids, titles, None, [], {})
        return
    k = data.draw(st.integers(1, 10))
    n_active = data.draw(st.integers(0, k))
    rows = n + data.draw(st.integers(1, 3))  # the batch's k_max may list more items than this request
    table = rounded(data.draw(st.lists(wire_number, min_size=rows * (k + 2), max_size=rows * (k + 2)))).reshape(
        rows, k + 2)
    order = np.array([data.draw(st.permutations(range(n_active))) + [-1] * (k - n_active) for _ in range(rows - 1)],
                     dtype=np.int64).reshape(rows - 1, k)
    described = data.draw(st.lists(concept, min_size=n_active, max_size=n_active,
                                   unique_by=lambda d: d.summary.latent))
    strengths = {d.summary.latent: data.draw(st.floats(0, 1, exclude_min=True) | st.sampled_from([0.5, 1.0, 1e-7]))
                 for d in described if data.draw(st.booleans())}
    ex = explained(table, order, n_active)
    top = data.draw(st.sampled_from([0, 0, 1, 2, 3, k]))  # explain_top (0: all)
    assert compiled_body(ids, scores, item_ids, titles, ex, described, strengths, top) == \
        python_body(ids, scores, item_ids, titles, ex, described, strengths, top)


@needs_compiled
@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=20))
def test_any_number_is_written_as_orjson_writes_it(values):
    """Off the 6-decimal grid (or beyond 1e9) the writer starts from Python's repr and writes
    orjson's notation (1e-7, 0.000015); non-finite numbers are null, as orjson writes them."""
    ids = list(range(len(values)))
    items, _ = hotpath.compiled_items(ids, values, [str(i) for i in ids], ["t"] * len(ids), None, None, [], None, 0)
    assert items == orjson.dumps([{"rank": i + 1, "item_id": str(i), "title": "t", "score": v, "explanation": None}
                                  for i, v in enumerate(values)])


@needs_compiled
def test_a_body_beyond_the_first_buffer_and_a_packed_catalogue():
    """Long titles (the writer starts in a 16 KB buffer, then grows) read from a packed catalogue
    (``recsae.bundle.PackedStrings``, what catalogues of millions load as)."""
    rng = np.random.default_rng(0)
    names = [f"item-{i}" for i in range(500)]
    long_titles = ["\u00e9\u2603 \"quoted\" \\ tab\t" * (i % 40 + 1) for i in range(500)]
    ids = rng.choice(500, 200, replace=False).tolist()
    scores = rounded(rng.normal(size=200)).tolist()
    table = rounded(rng.normal(size=(201, 10)))
    order = np.argsort(-table[:200, :8], axis=1).astype(np.int64)  # 8 positions, all firing
    described = [describe(j, ConceptSummary(latent=j, status="described", description=f"concept {j} — x" * 50,
                                            confidence=0.5)) for j in range(8)]
    ex = explained(table, order, 8)
    got = compiled_body(ids, scores, PackedStrings(names), PackedStrings(long_titles), ex, described, {3: 0.5})
    assert len(got) > 100_000
    assert got == python_body(ids, scores, names, long_titles, ex, described, {3: 0.5})


@needs_compiled
def test_input_it_cannot_write_is_refused_with_an_error_never_a_crash():
    ids, scores, names = [0, 1], [0.5, 0.25], ["a", "b"]
    table = np.zeros((3, 4))
    order = np.array([[0, 1], [1, -1]], dtype=np.int64)
    parts = [describe(j, ConceptSummary(latent=j, status="dead")).json for j in (1, 2)]
    call = hotpath.compiled_items
    with pytest.raises(ValueError):  # a lone surrogate: not UTF-8 (orjson refuses it as well)
        call(ids, scores, ["\ud800", "b"], names, None, None, [], None, 0)
    with pytest.raises(TypeError):  # not a str
        call(ids, scores, [1, 2], names, None, None, [], None, 0)
    with pytest.raises(TypeError):
        call(ids, scores, names, names, table.astype(np.float32), order, parts, None, 0)
    with pytest.raises(TypeError):
        call(ids, scores, names, names, table, order.astype(np.int32), parts, None, 0)
    with pytest.raises((TypeError, BufferError, ValueError)):  # not C-contiguous
        call(ids, scores, names, names, np.zeros((4, 3)).T, order, parts, None, 0)
    with pytest.raises(ValueError):  # a position no part names
        call(ids, scores, names, names, table, np.full((2, 2), 2, dtype=np.int64), parts, None, 0)
    with pytest.raises(ValueError):
        call(ids, scores, names, names, table, np.full((2, 2), -2, dtype=np.int64), parts, None, 0)
    with pytest.raises(ValueError):  # order's width is not the table's k
        call(ids, scores, names, names, table, np.zeros((2, 3), dtype=np.int64), parts, None, 0)
    with pytest.raises(TypeError):  # parts not as Described.json
        call(ids, scores, names, names, table, order, [p[:4] for p in parts], None, 0)
    with pytest.raises(TypeError):
        call(ids, scores, names, names, table, order, [tuple(x.decode() for x in p) for p in parts], None, 0)
    with pytest.raises(TypeError):  # one strength per part
        call(ids, scores, names, names, table, order, parts, [0.5], 0)
    with pytest.raises(TypeError):
        call(ids, scores, names, names, table, order, parts, [0.5, "x"], 0)
    with pytest.raises(ValueError):  # no table row for the activations
        call(ids, scores, names, names, np.zeros((2, 4)), order, parts, None, 0)
    with pytest.raises(ValueError):
        call(ids, scores, names, names, None, None, parts, None, 0)
    with pytest.raises(ValueError):
        call([-1, 0], scores, names, names, None, None, [], None, 0)
    with pytest.raises(IndexError):
        call([5, 0], scores, names, names, None, None, [], None, 0)
    with pytest.raises(ValueError):
        call(ids, scores[:1], names, names, None, None, [], None, 0)
    with pytest.raises(TypeError):
        call(ids, ["0.5", 0.25], names, names, None, None, [], None, 0)
    assert call([], [], [], [], None, None, [], None, 0) == (b"[]", b"[]")
    with pytest.raises(ValueError):  # top: 0 (all) or more
        call(ids, scores, names, names, table, order, parts, None, -1)


def random_batch(rng, E=5, k=8, n=10, m=64, d=16, n_items=50, firing=None):
    """An SAE, a catalogue and a batch as ``Core._explain_batch`` hands them over: codes sorted
    descending with the non-firing (0) last, suppression weights, per-row baselines."""
    sae = SAEKernel(rng.normal(size=(m, d)).astype(np.float32), rng.normal(size=m).astype(np.float32),
                    rng.normal(size=(m, d)).astype(np.float32), rng.normal(size=d).astype(np.float32), k)
    emb = rng.normal(size=(n_items, d)).astype(np.float32)
    acts = -np.sort(-np.abs(rng.normal(size=(E, k))), axis=1).astype(np.float32)
    for e, f in enumerate(firing or []):
        acts[e, f:] = 0.0
    idx = np.stack([rng.choice(m, k, replace=False) for _ in range(E)]).astype(np.int64)
    w = np.where(rng.random((E, k)) < 0.3, rng.random((E, k)), 0.0).astype(np.float32)
    baseline = np.where(rng.random(E) < 0.5, rng.random(E), 0.0)
    xs = rng.normal(size=(E, d)).astype(np.float32)
    ids = np.stack([rng.choice(n_items, n, replace=False) for _ in range(E)]).astype(np.int64)
    return sae, emb, xs, Codes(acts, idx), w, baseline, ids


def run_compiled(sae, emb, xs, codes, w, baseline, ids):
    (E, n), k = ids.shape, codes.acts.shape[1]
    table, order = np.full((E, n + 1, k + 2), np.nan), np.full((E, n, k), 99, dtype=np.int64)
    hotpath.compiled_explain(xs, codes.acts, w, codes.idx, baseline, ids, sae.W_dec, sae.b_dec, emb, table, order)
    return table, order


@needs_compiled
@pytest.mark.parametrize("seed", range(6))
def test_explain_decomposes_as_the_kernel_does(seed):
    rng = np.random.default_rng(seed)
    firing = [8, 3, 1, 8, 5] if seed % 2 else None  # rows whose code fires fewer than k latents
    sae, emb, xs, codes, w, baseline, ids = random_batch(rng, firing=firing)
    table, order = run_compiled(sae, emb, xs, codes, w, baseline, ids)
    ex = sae.explain(xs, Codes(codes.acts * (1.0 - w), codes.idx), emb[ids], baseline)
    E, k, n = ex.contributions.shape
    tol = dict(abs=2e-6, rel=1e-5)  # float64 here, float32 in NumPy; then both rounded to 6 decimals
    assert table[:, :n, :k] == pytest.approx(ex.contributions.transpose(0, 2, 1), **tol)
    assert table[:, :n, k] == pytest.approx(ex.bias, **tol)
    assert table[:, :n, k + 1] == pytest.approx(ex.error, **tol)
    assert table[:, n, :k] == pytest.approx(codes.acts, abs=1e-6) and (table[:, n, k:] == 0).all()
    assert (np.round(table, 6) == table).all()  # rounded for the wire
    # bias + contributions + error is the steered score x' . item
    assert table[:, :n, :].sum(axis=2) == pytest.approx(np.einsum("ed,end->en", xs, emb[ids]), abs=1e-4)
    for e in range(E):
        fire = int((codes.acts[e] > 0).sum())
        for i in range(n):
            ranked = order[e, i, :fire].tolist()
            assert sorted(ranked) == list(range(fire)) and (order[e, i, fire:] == -1).all()
            vals = table[e, i, ranked]
            assert (np.diff(vals) <= 1e-6).all()  # largest first (up to the rounding)


@needs_compiled
def test_explain_and_the_services_numpy_path_fill_the_same_table_and_order():
    """``Core._explain_numpy`` (where the module is not built) and the compiled call agree."""
    from service.core import Core

    rng = np.random.default_rng(7)
    sae, emb, xs, codes, w, baseline, ids = random_batch(rng, firing=[8, 2, 8, 6, 1])
    table, order = run_compiled(sae, emb, xs, codes, w, baseline, ids)
    E, n = ids.shape
    k = codes.acts.shape[1]
    t2, o2 = np.empty((E, n + 1, k + 2)), np.empty((E, n, k), dtype=np.int64)
    host = type("Host", (), {})()
    host.sae, host.engine = sae, type("Engine", (), {"item_emb": emb})()
    Core._explain_numpy(host, xs, codes, w, baseline, ids, (codes.acts > 0).sum(axis=1).tolist(), t2, o2)
    assert t2 == pytest.approx(table, abs=2e-6, rel=1e-5)  # float32 there, float64 here
    assert ((order == -1) == (o2 == -1)).all()
    clear = 0  # items whose firing contributions hold no near-ties: the same order exactly
    for e, fire in enumerate((codes.acts > 0).sum(axis=1).tolist()):
        for i in range(n):
            if fire < 2 or np.diff(np.sort(table[e, i, :fire])).min() > 1e-5:
                assert (order[e, i] == o2[e, i]).all()
                clear += 1
    assert clear > 0.8 * E * n


@needs_compiled
def test_explain_refuses_what_it_cannot_compute():
    rng = np.random.default_rng(1)
    sae, emb, xs, codes, w, baseline, ids = random_batch(rng)
    good = [xs, codes.acts, w, codes.idx, baseline, ids, sae.W_dec, sae.b_dec, emb]
    (E, n), k = ids.shape, codes.acts.shape[1]

    def call(*args, table=None, order=None):
        t = np.empty((E, n + 1, k + 2)) if table is None else table
        o = np.empty((E, n, k), dtype=np.int64) if order is None else order
        hotpath.compiled_explain(*args, t, o)

    call(*good)
    with pytest.raises(TypeError):  # float64 where float32 is expected
        call(xs.astype(np.float64), *good[1:])
    with pytest.raises((TypeError, ValueError)):  # not contiguous
        call(*good[:8], np.asfortranarray(emb))
    with pytest.raises(ValueError):  # an item the catalogue does not hold
        call(*good[:5], np.where(ids == ids[0, 0], len(emb), ids), *good[6:])
    with pytest.raises(ValueError):
        call(*good[:3], np.where(codes.idx == codes.idx[0, 0], -1, codes.idx), *good[4:])
    with pytest.raises(ValueError):  # the table's shape
        call(*good, table=np.empty((E, n, k + 2)))
    with pytest.raises((TypeError, ValueError)):  # a read-only table
        t = np.empty((E, n + 1, k + 2))
        t.flags.writeable = False
        call(*good, table=t)
    with pytest.raises(TypeError):
        hotpath.compiled_explain(*good)
