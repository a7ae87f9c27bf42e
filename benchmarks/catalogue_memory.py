"""Memory of a large catalogue held as Python lists + a dict vs packed (``recsae.bundle.PACK_FROM``).

Each way in its own fresh process: a synthetic ``catalog.json`` of ``--items`` items (numeric ids,
titles like the synthetic bundles', one feature on every 7th item) is loaded with
``Catalog.from_json`` as ``load_bundle`` does; reported are the resident memory the catalogue
adds once loaded, the peak while loading, the load time, and the time of 10,000 id lookups and
of reading 10,000 items' id and title (what a request does for its k items); for the packed way
also the audit page's title search, a scan of every title vs ``TitleSearch``.

    .venv/bin/python benchmarks/catalogue_memory.py --items 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(path: str, packed: bool) -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from recsae import bundle as B

    B.PACK_FROM = 1 if packed else 1 << 62
    text = Path(path).read_text()
    before = rss_mb()
    t0 = time.perf_counter()
    cat = B.Catalog.from_json(json.loads(text))
    load_s = time.perf_counter() - t0
    del text
    after = rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = len(cat.item_ids)
    rng = np.random.default_rng(0)
    probe = [str(int(i) + 1) for i in rng.integers(0, n, 10_000)]
    t0 = time.perf_counter()
    found = [cat.index_of(p) for p in probe]
    lookup_us = (time.perf_counter() - t0) / len(probe) * 1e6
    assert all(f == int(p) - 1 for f, p in zip(found, probe))
    rows = rng.integers(0, n, 10_000).tolist()
    t0 = time.perf_counter()
    for r in rows:
        cat.item_ids[r], cat.titles[r]
    read_us = (time.perf_counter() - t0) / len(rows) * 1e6
    res = {"resident_mb": after - before, "peak_mb": peak, "load_s": load_s, "lookup_us": lookup_us, "read_us": read_us}
    if packed:  # the audit page's title search (GET /audit/items): the scan it replaced vs the index
        from service.audit_routes import TitleSearch

        miss, hit = "no such title", "item 4242"
        t0 = time.perf_counter()
        naive = [i for i, t in enumerate(cat.titles) if all(w in t.casefold() for w in miss.split())][:10]
        res["scan_miss_s"] = time.perf_counter() - t0
        m0, t0 = rss_mb(), time.perf_counter()
        index = TitleSearch(cat.titles)
        res["index_build_s"], res["index_mb"] = time.perf_counter() - t0, rss_mb() - m0
        t0 = time.perf_counter()
        assert index.find(miss, 10) == naive == []
        res["index_miss_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert len(index.find(hit, 10)) == 10
        res["index_hit_ms"] = (time.perf_counter() - t0) * 1e3
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=10_000_000)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1] == "packed")
        return
    n = args.items
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "catalog.json"
        with open(path, "w") as f:  # written piecewise: the lists themselves would be the memory measured
            f.write('{"item_ids": [' + ",".join(f'"{i}"' for i in range(1, n + 1)))
            f.write('], "titles": [' + ",".join(f'"Synthetic item {i}"' for i in range(1, n + 1)))
            f.write('], "feature_names": ["genre:Drama"], "item_features": ['
                    + ",".join("[0]" if i % 7 == 0 else "[]" for i in range(n)))
            f.write('], "popularity": [' + ",".join("0" for _ in range(n)) + "]}")
        res = {}
        for way in ("lists", "packed"):
            out = subprocess.run([sys.executable, __file__, "--child", str(path), way], capture_output=True,
                                 text=True, check=True)
            res[way] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{n:,} items; each way in a fresh process\n")
    print("| held as | resident after load, MB | peak RSS of the process, MB | load s | id lookup us | read id + title us |")
    print("|---|---:|---:|---:|---:|---:|")
    for way, r in res.items():
        print(f"| {way} | {r['resident_mb']:.0f} | {r['peak_mb']:.0f} | {r['load_s']:.1f} | {r['lookup_us']:.2f} | "
              f"{r['read_us']:.2f} |")
    r = res["packed"]
    print("\nThe audit page's title search (`GET /audit/items`, `service.audit_routes.TitleSearch`):\n")
    print("| a query no title matches: scan of every title, s | index: built once, s | its memory, MB | "
          "the same query, s | a query with 10 matches, ms |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {r['scan_miss_s']:.2f} | {r['index_build_s']:.1f} | {r['index_mb']:.0f} | {r['index_miss_s']:.3f} | "
          f"{r['index_hit_ms']:.2f} |")


if __name__ == "__main__":
    main()
