"""Digest of what a refactor must not change: the synthetic default bundle's files (weights,
concepts, catalogue), its top-10 lists (plain and steered) and the de-bias report's numbers.

Run it from two checkouts (same seed, same settings) and compare the two ``digest.json``::

    .venv/bin/python scripts/behaviour_digest.py /tmp/before   # in the old checkout
    .venv/bin/python scripts/behaviour_digest.py /tmp/after    # in the new one

Expected differences only: ``encoder.onnx`` (torch's exporter writes the checkout's source paths
into node metadata: compare its initializers and nodes instead, as ``onnx_graph`` does) and the
report's Markdown/stdout (they name the bundle's path, version and hash). Timings are left out.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def clean(o):
    """Metrics without timings (they differ run to run)."""
    if isinstance(o, dict):
        return {k: clean(v) for k, v in o.items() if not any(w in k for w in ("second", "time", "spent", "_s"))}
    return [clean(v) for v in o] if isinstance(o, list) else o


def main(out: Path) -> dict:
    py, b = sys.executable, out / "bundle"
    if not (b / "manifest.json").exists():
        subprocess.run([py, "-m", "recsae.cli", "train", "--dataset", "synthetic", "--quality-budget", "0",
                        "--threads", "1", "-q", "--out", str(b), "--work-dir", str(out / "work")], check=True)
    with open(out / "debias.txt", "w") as f:
        subprocess.run([py, "-m", "recsae.cli", "debias", str(b), "--out", str(out / "report"), "-q", "--seeds", "2"],
                       check=True, stdout=f)
    import onnx
    from onnx import numpy_helper

    from recsae.engine import Engine

    dig = {str(f.relative_to(b)): sha(f.read_bytes()) for f in sorted(b.rglob("*"))
           if f.is_file() and f.name not in ("manifest.json", "atlas.html")}
    g = onnx.load(str(b / "encoder.onnx")).graph
    dig["onnx_graph"] = sha(json.dumps([[n.op_type, list(n.input), list(n.output)] for n in g.node]).encode()
                            + b"".join(numpy_helper.to_array(i).tobytes() for i in g.initializer))
    concepts = json.loads((b / "concepts.json").read_text())
    dig["concepts.json"] = sha(json.dumps(clean(concepts), sort_keys=True).encode())
    dig["manifest.metrics"] = sha(json.dumps(clean(json.loads((b / "manifest.json").read_text())["metrics"]),
                                             sort_keys=True, default=str).encode())
    eng = Engine.from_path(str(b))
    x = eng.encode_users(np.arange(len(eng.bundle.users.user_ids)))
    ids, _, codes, _ = eng.recommend(x, 10)
    dig["top10"] = sha(np.asarray(ids).tobytes())
    ids, _, _, _ = eng.recommend(x, 10, suppress={int(codes.idx[0][0]): 1.0}, baseline=0.3)
    dig["top10_steered"] = sha(np.asarray(ids).tobytes())
    rep = json.loads((out / "report" / "debias-popularity.json").read_text())
    rep.pop("source", None)  # the bundle's path, version and hash
    dig["debias_numbers"] = sha(json.dumps(rep, sort_keys=True, default=str).encode())
    (out / "digest.json").write_text(json.dumps(dig, indent=1))
    return dig


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]).resolve()), indent=1))
