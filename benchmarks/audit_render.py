"""First render of the audit page: from navigation to the list, the concepts and the history
with its drivers all shown, in headless Chromium against ``bentoml serve`` (in-process Redis-less
mode), for several users, each a fresh navigation.

    .venv/bin/python benchmarks/audit_render.py                      # the synthetic test bundle
    .venv/bin/python benchmarks/audit_render.py --dataset ml-100k    # SASRec on ml-100k (../shared/data)
    .venv/bin/python benchmarks/audit_render.py --bundle bundles/default

``--screenshots docs/audit`` saves the README's pictures of the views (after the timing).

Prints the median and worst time to a complete page (performance.now() at the moment both the
recommendations and the history report ready), and the same for the concept page.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WAIT = """new Promise(done => { const t0 = performance.now(); (function poll() {
  const ok = %s;
  if (ok || performance.now() - t0 > 30000) done(ok ? performance.now() : -1); else requestAnimationFrame(poll); })(); })"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle")
    ap.add_argument("--dataset", default="synthetic", choices=["synthetic", "ml-100k"])
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--screenshots", metavar="DIR", help="also save the four views (and a phone-width one) as PNGs")
    args = ap.parse_args()
    from tests.devserver import ServeProcess
    from tests.integration.test_audit_browser import CDP, CHROMIUM

    if args.bundle:
        bundle = Path(args.bundle)
    else:
        from tests.conftest import build_small_bundle, serving_bundle, shared_data_dir

        bundle = serving_bundle() if args.dataset == "synthetic" else build_small_bundle(shared_data_dir())
    serve = ServeProcess({"RECSAE_BUNDLE": str(bundle), "REDIS_URL": "", "RECSAE_AUDIT_SAMPLE": "0"}).start(300)
    profile = Path(tempfile.mkdtemp(prefix="recsae-chromium-"))
    chrome = subprocess.Popen(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1280,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        while not (port_file.exists() and port_file.read_text().strip()):
            time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", int(port_file.read_text().split()[0]), timeout=10)
        conn.request("GET", "/json/list")
        cdp = CDP(next(t for t in json.loads(conn.getresponse().read()) if t["type"] == "page")["webSocketDebuggerUrl"])
        cdp.call("Page.enable")
        _, b = serve.get("/bundle")
        _, first = serve.get("/recommend", {"user_id": "1", "k": 1, "explain": "true"})
        latent = first["active_latents"][0]["latent"]
        users = [str(u) for u in range(1, args.users + 1)]
        page, concept = [], []
        for u in users:
            cdp.call("Page.navigate", url=f"{serve.base}/audit?user={u}")
            t = cdp.js(WAIT % "document.querySelector('#rec-status') && document.querySelector('#rec-status').dataset.state === 'ready' && "
                       "document.querySelector('#history-status').dataset.state === 'ready'")
            page.append(t)
            cdp.call("Page.navigate", url=f"{serve.base}/audit/concepts/{latent}")
            concept.append(cdp.js(WAIT % "document.querySelector('#c-status') && document.querySelector('#c-status').dataset.state === 'ready'"))
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        print(f"bundle {bundle.name} ({b['model']['name']}, {b['sae']['n_latents']} latents, {b['model']['n_items']} items), "
              f"{len(users)} users, 1280x900, no Redis\n")
        print("| view | median to complete | worst | first load |")
        print("|---|---|---|---|")
        print(f"| /audit?user=U (list, concepts, history + drivers) | {med(page):.0f} ms | {max(page):.0f} ms | {page[0]:.0f} ms |")
        print(f"| /audit/concepts/{latent} | {med(concept):.0f} ms | {max(concept):.0f} ms | {concept[0]:.0f} ms |")
        if args.screenshots:
            shots(cdp, serve.base, Path(args.screenshots))
        cdp.close()
    finally:
        os.killpg(chrome.pid, 15)
        chrome.wait(10)
        serve.stop()


def shots(cdp, base: str, out: Path) -> None:
    import base64

    out.mkdir(parents=True, exist_ok=True)

    def save(name: str) -> None:
        png = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
        (out / name).write_bytes(png)
        print(f"wrote {out / name} ({len(png) // 1024} KiB)")

    ready = "document.querySelector('#%s') && document.querySelector('#%s').dataset.state === 'ready'"
    cdp.call("Page.navigate", url=f"{base}/audit?user=1")
    cdp.js(WAIT % (ready % ("rec-status", "rec-status") + " && " + ready % ("history-status", "history-status")))
    j = cdp.js("(document.querySelector('#concept-bars .bar-row .drivers') || document.querySelector('#concept-bars .bar-row'))"
               ".closest('.bar-row').dataset.latent")
    cdp.js(f"document.querySelector('#concept-bars .bar-row[data-latent=\"{j}\"]').dispatchEvent(new MouseEvent('mouseenter'))")
    save("audit-user.png")
    cdp.call("Page.navigate", url=f"{base}/audit/concepts/{j}")
    cdp.js(WAIT % (ready % ("c-status", "c-status")))
    save("audit-concept.png")
    cdp.call("Page.navigate", url=f"{base}/audit?view=dict")
    cdp.js(WAIT % (ready % ("dict-status", "dict-status") + " && " + ready % ("drift-summary", "drift-summary")))
    save("audit-dictionary.png")
    cdp.call("Page.navigate", url=f"{base}/audit?view=segments")
    cdp.js(WAIT % "document.querySelector('#seg-a-feature') && document.querySelector('#seg-a-feature').options.length > 0")
    cdp.js("(e => { e.value = 'feature'; e.dispatchEvent(new Event('change')); })(document.querySelector('#seg-a-kind'))")
    cdp.js("(e => { e.selectedIndex = Math.min(e.options.length - 1, 10); })(document.querySelector('#seg-a-feature'))")
    cdp.js("document.querySelector('#seg-compare').click()")
    cdp.js(WAIT % (ready % ("seg-status", "seg-status")))
    save("audit-segments.png")
    cdp.call("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=1, mobile=True)
    cdp.call("Page.navigate", url=f"{base}/audit?user=1")
    cdp.js(WAIT % (ready % ("rec-status", "rec-status")))
    save("audit-phone.png")
    cdp.call("Emulation.clearDeviceMetricsOverride")


if __name__ == "__main__":
    main()
