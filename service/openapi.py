"""Regenerate (or check) the committed OpenAPI document, service/openapi.json.

    python -m service.openapi            # rewrite service/openapi.json
    python -m service.openapi --check    # exit 1 when the committed file is stale

The document is FastAPI's, generated from the Pydantic models in ``service.schemas``; it covers
the application routes (BentoML's /livez, /readyz, /metrics are not part of it). No bundle is
needed: importing the service module does not load one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

PATH = Path(__file__).with_name("openapi.json")


def render() -> str:
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    from service.service import app

    return json.dumps(app.openapi(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail when service/openapi.json is stale")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not PATH.exists() or PATH.read_text() != text:
            print(f"{PATH} is stale: run `python -m service.openapi`", file=sys.stderr)
            return 1
        print(f"{PATH} is up to date")
        return 0
    PATH.write_text(text)
    print(f"wrote {PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
