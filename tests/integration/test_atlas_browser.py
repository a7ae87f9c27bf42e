"""The concept atlas in headless Chromium: every latent has a card, the table sorts, it opens
offline; a screenshot goes to test-artifacts/ for a human look."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_stub import tiny_world  # noqa: E402

from recsae.interpret import interpret_activations, write_atlas  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: apt-get install -y chromium"),
]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"  # a fresh one per run
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--virtual-time-budget=5000"]  # fmt: skip
    r = subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    """A bundle-like folder (concepts.json + manifest.json) with its atlas written by write_atlas."""
    ds, kernel, emb, acts, _ = tiny_world()
    d = interpret_activations(ds, kernel, emb, acts, describer="stats")
    folder = tmp_path_factory.mktemp("bundle")
    (folder / "concepts.json").write_text(d.model_dump_json())
    (folder / "manifest.json").write_text(json.dumps({"version": "test", "dataset": {"dataset": "synthetic"}}))
    (folder / "catalog.json").write_text(json.dumps({"item_ids": [str(i) for i in ds.item_ids],
                                                     "titles": list(ds.item_titles)}))
    return write_atlas(folder), d


def test_every_latent_has_a_card_and_the_page_needs_no_network(atlas, tmp_path):
    path, d = atlas
    html = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing to fetch
    dom = chromium(tmp_path, "--dump-dom", path.as_uri()).stdout
    for c in d.concepts:
        card = re.search(rf'<section class="card (\w+)" id="latent-{c.latent}"[^>]*>(.*?)</section>', dom, re.S)
        assert card, f"no card for latent {c.latent}"
        assert card.group(1) == c.status
        if c.status == "described":
            assert "<svg" in card.group(2) and "enriched attribute" in card.group(2)
            assert c.evidence.top_items[0].replace("&", "&amp;") in card.group(2)
    rows = re.findall(r'<tr><td data-v="(\d+)"', dom)
    assert sorted(int(r) for r in rows) == [c.latent for c in d.concepts]


def test_the_overview_table_sorts(atlas, tmp_path):
    path, d = atlas
    dom = chromium(tmp_path, "--dump-dom", path.as_uri() + "#sort=-3").stdout  # confidence, descending
    body = dom.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    cells = [re.findall(r'<td data-v="([^"]*)"', row) for row in body.split("</tr>") if "<td" in row]
    conf = [float(c[3]) for c in cells if c[3]]
    assert cells[-1][3] == "" and len(cells) == len(d.concepts)  # unscored (dead) latents go last
    assert conf == sorted(conf, reverse=True) and len(conf) == sum(c.confidence is not None for c in d.concepts)
    assert conf[0] == max(c.confidence for c in d.concepts if c.confidence is not None)


def test_screenshot(atlas, tmp_path):
    path, _ = atlas
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "atlas.png"
    shot.unlink(missing_ok=True)
    chromium(tmp_path, "--window-size=1280,1600", f"--screenshot={shot}", path.as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def d_titles(atlas_path: Path) -> list[str]:
    return json.loads((atlas_path.parent / "catalog.json").read_text())["titles"]


def test_cards_are_collapsed_tags_are_readable_and_search_filters(atlas, tmp_path):
    """#20 item 7: the page is short (cards collapsed, one opened by its link), attribute tags
    read as words with titles (the raw feature name only in the tooltip), histograms have axes,
    and a search (``#q=...``) filters the table to the concepts whose text has every word."""
    path, d = atlas
    dom = chromium(tmp_path, "--dump-dom", path.as_uri()).stdout
    assert "<details open" not in dom.split('<div class="cards">', 1)[1]  # every card starts collapsed
    tags = re.findall(r'<span class="tag[^"]*" title="([^"]+)">([^<]+)</span>', dom)
    assert tags, "no attribute tags"
    for raw, shown in tags:
        assert raw != shown and not re.search(r"\b(last|next):", shown), (raw, shown)
    item_tags = [(raw, shown) for raw, shown in tags if ":item:" in raw]
    titles = set(d_titles(path))
    assert all(shown.split(": ", 1)[1] in titles for _, shown in item_tags), item_tags[:5]
    assert "activation (bar height: samples" in dom
    described = [c for c in d.concepts if c.status == "described" and c.description]
    word = max((w for c in described for w in re.findall(r"[A-Za-z]{5,}", c.description)),
               key=lambda w: sum(w.lower() in (c.description or "").lower() for c in described))
    expect = sorted(c.latent for c in d.concepts if word.lower() in (c.description or c.reason or "").lower())
    dom = chromium(tmp_path, "--dump-dom", path.as_uri() + "#q=" + word).stdout
    shown = sorted(int(r) for r in re.findall(r'<tr><td data-v="(\d+)"', dom))
    hidden = sorted(int(r) for r in re.findall(r'<tr hidden=""><td data-v="(\d+)"', dom))
    assert shown == expect and len(shown) + len(hidden) == len(d.concepts), (word, shown[:10], expect[:10])
    assert f"{len(expect)} match" in dom
