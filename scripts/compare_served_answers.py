"""Serve one bundle from two checkouts of this repository and compare their answers, byte for byte.

For refactors that must not change behaviour (issue #18): each checkout's service runs in its
own process (BentoML's ASGI app under starlette's TestClient: routing, validation, middleware,
batching, steering and explanation as served), answers the same requests, and this script
compares status codes and bodies. Requests: for each of ``--users`` users, the plain list, the
explained one, suppression (by id, with strengths, the default strength), the baseline, the
reconstruction mode, a stored policy alone and with a request's own suppression, no exclusion;
histories (POST) on sequential bundles; errors (unknown user/latent/policy, bad strengths,
repeated parameters); the concept, bundle and OpenAPI endpoints.

    git archive c023660 | tar -x -C /tmp/old
    .venv/bin/python scripts/compare_served_answers.py --old /tmp/old --users 200

Without ``--bundle`` it serves the synthetic test bundle (``tests.conftest.serving_bundle``).
Prints the number of requests compared and every difference; exit code 1 if any.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "compare-token"


def requests_for(client, users: list[str], history: bool) -> list[tuple[str, str, object]]:
    """(method, url, json body) — built from the served answers, so identical while they are."""
    out: list[tuple[str, str, object]] = []
    for n, u in enumerate(users):
        base = f"/recommend?user_id={u}"
        out += [("GET", f"{base}&k=10", None), ("GET", f"{base}&k=10&explain=true", None)]
        body = client.get(f"{base}&k=10&explain=true").json()
        lat = [a["latent"] for a in body.get("active_latents", [])] or [0, 1]
        a, b = lat[0], lat[min(1, len(lat) - 1)]
        out += [
            ("GET", f"{base}&explain=true&suppress={a},{b}", None),
            ("GET", f"{base}&explain=true&suppress={a}:0.5,{b}&suppress_strength=0.3", None),
            ("GET", f"{base}&suppress={a},{a}:0.2&k=5", None),
            ("GET", f"{base}&explain=true&suppress_baseline=0.4", None),
            ("GET", f"{base}&explain=true&mode=reconstruction&suppress={a}", None),
            ("GET", f"{base}&explain=true&policy=calm", None),
            ("GET", f"{base}&explain=true&policy=calm&suppress={b}:0.9&suppress_baseline=0.1&mode=error", None),
            ("GET", f"{base}&exclude_seen=false&k=20&explain={'true' if n % 2 else 'false'}", None),
        ]
        if history and n < 40:
            items = [it["item_id"] for it in body.get("items", [])][:3] or ["1"]
            out += [
                ("POST", "/recommend", {"history": items, "explain": True}),
                ("POST", "/recommend", {"history": items, "explain": True, "suppress": [a, {"latent": b, "strength": 0.5}],
                                        "suppress_strength": 0.7, "policy": "calm"}),
            ]
    u = users[0]
    out += [
        ("GET", f"/recommend?user_id={u}&suppress=99999999", None),
        ("GET", f"/recommend?user_id={u}&suppress=1:2", None),
        ("GET", f"/recommend?user_id={u}&suppress=1:x", None),
        ("GET", f"/recommend?user_id={u}&suppress=1,,2", None),
        ("GET", f"/recommend?user_id={u}&suppress=" + ",".join(map(str, range(300))), None),
        ("GET", f"/recommend?user_id={u}&policy=no-such-policy", None),
        ("GET", f"/recommend?user_id={u}&k=0", None),
        ("GET", f"/recommend?user_id={u}&k=5&k=6", None),
        ("GET", f"/recommend?user_id={u}&suppress_baseline=nan", None),
        ("GET", "/recommend?user_id=no-such-user", None),
        ("POST", "/recommend", {"history": ["no-such-item"]}),
        ("POST", "/recommend", {"history": ["1"], "suppress": [{"latent": 1, "strength": 0}]}),
        ("GET", "/concepts?limit=50", None), ("GET", "/concepts?q=a&sort=latent", None),
        ("GET", "/concepts/3", None), ("GET", "/concepts/99999", None), ("GET", "/concepts/1%0A", None),
        ("GET", "/bundle", None), ("GET", "/openapi.json", None), ("GET", "/docs.json", None),
        ("GET", "/nope", None), ("DELETE", "/recommend", None), ("GET", "/admin/policies", None),
        ("GET", "/audit/policies", None), ("GET", "/drift?top=5", None),
    ]
    return out


def child(out: str, bundle: str, n_users: int) -> None:
    """Runs inside one checkout: serve, answer, write [status, body] per request to ``out``."""
    from starlette.testclient import TestClient

    from service.service import RecSAEService

    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(RecSAEService.to_asgi(), raise_server_exceptions=False) as c:
        info = c.get("/bundle").json()
        first = c.get("/concepts?limit=4").json()["concepts"]
        r = c.put("/admin/policies/calm", headers=auth,
                  json={"latents": [x["latent"] for x in first[:2]], "strength": 0.8, "baseline": 0.2})
        assert r.status_code == 200, r.text
        from recsae.bundle import load_bundle

        ids = load_bundle(bundle).users.user_ids
        step = max(1, len(ids) // n_users)
        users = [str(ids[i]) for i in range(0, len(ids), step)][:n_users]
        answers = []
        for method, url, body in requests_for(c, users, bool(info.get("accepts_history"))):
            r = c.request(method, url, json=body, headers=auth if url.startswith("/admin") else None)
            answers.append([method, url, body, r.status_code, r.text])
    Path(out).write_text(json.dumps(answers))


def run(tree: Path, bundle: str, n_users: int, tmp: Path) -> list:
    out = tmp / f"{tree.name}-{os.getpid()}.json"
    env = {**os.environ, "PYTHONPATH": str(tree), "RECSAE_BUNDLE": bundle, "RECSAE_ADMIN_TOKEN": TOKEN,
           "RECSAE_STATE_DIR": str(tmp / f"state-{tree.name}"), "RECSAE_AUDIT_SAMPLE": "0",
           "RECSAE_POLICY_SYNC_S": "0", "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="recsae-prom-"),
           "BENTOML_DO_NOT_TRACK": "True", "RECSAE_REDIS_PREFIX": f"compare-{os.getpid()}-{tree.name}"}
    env.pop("REDIS_URL", None)
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'scripts')!r}); import compare_served_answers as c; "
            f"c.child({str(out)!r}, {bundle!r}, {n_users})")
    subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True)
    return json.loads(out.read_text())


def _comparable(answer: list) -> list:
    """An answer without the times policies were stored at (each process stored its own)."""
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in ("created_at", "updated_at")}
        return [strip(x) for x in v] if isinstance(v, list) else v

    try:
        return answer[:4] + [strip(json.loads(answer[4]))]
    except ValueError:
        return answer


def _same(a, b, tol: float) -> bool:
    """Equal, numbers within ``tol`` (a float (not int or bool) of one side against a number of the other)."""
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return abs(a - b) <= tol
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, tol) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="the other checkout (e.g. from git archive)")
    ap.add_argument("--new", type=Path, default=ROOT)
    ap.add_argument("--bundle", help="bundle directory (default: the synthetic test bundle)")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--tolerance", type=float, default=0.0,
                    help="numbers may differ by this much (e.g. 2e-6: a changed summation order moves a float32 "
                         "score by an ulp, its 6-decimal rounding by 1e-6); everything else still byte for byte")
    args = ap.parse_args(argv)
    if args.bundle is None:
        sys.path.insert(0, str(ROOT))
        from tests.conftest import serving_bundle

        args.bundle = str(serving_bundle())
    with tempfile.TemporaryDirectory(prefix="recsae-compare-") as tmp:
        old = run(args.old.resolve(), args.bundle, args.users, Path(tmp))
        new = run(args.new.resolve(), args.bundle, args.users, Path(tmp))
    diffs = [(o, n) for o, n in zip(old, new) if not _same(_comparable(o), _comparable(n), args.tolerance)]
    if len(old) != len(new):
        print(f"different request lists: {len(old)} vs {len(new)}")
    for o, n in diffs[:20]:
        print(f"DIFF {o[0]} {o[1]}\n  old {o[3]} {o[4][:300]}\n  new {n[3]} {n[4][:300]}")
    statuses: dict[int, int] = {}
    for a in old:
        statuses[a[3]] = statuses.get(a[3], 0) + 1
    explained = sum('"explanation":{' in a[4] for a in old)
    print(f"{len(old)} requests ({args.users} users; statuses {dict(sorted(statuses.items()))}; "
          f"{explained} with explanations): {len(diffs)} differ" + (f" (numbers within {args.tolerance:g})" if args.tolerance else ""))
    return 1 if diffs or len(old) != len(new) else 0


if __name__ == "__main__":
    sys.exit(main())
