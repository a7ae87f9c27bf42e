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
import sys
from pathlib import Path
from typing import Any

PATH = Path(__file__).with_name("openapi.json")


def to_openapi_30(doc: Any) -> Any:
    """A document whose schemas are in OpenAPI 3.1 / JSON Schema 2020-12 style made valid 3.0:
    numeric ``exclusiveMinimum``/``exclusiveMaximum`` become ``minimum``/``maximum`` plus the
    boolean flag, ``{"type": "null"}`` alternatives become ``nullable``, ``examples`` lists in
    schemas become one ``example``, ``const`` an ``enum``. BentoML serves /docs.json as 3.0 but
    merges FastAPI's 3.1-style schemas in unchanged."""
    if isinstance(doc, list):
        return [to_openapi_30(v) for v in doc]
    if not isinstance(doc, dict):
        return doc
    out = {k: to_openapi_30(v) for k, v in doc.items()}
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), (int, float)) and not isinstance(out[bound], bool):
            out[flag], out[bound] = out[bound], True
    for key in ("anyOf", "oneOf"):
        alts = out.get(key)
        nulls = ({"type": "null"}, {"nullable": True})  # (children are converted already)
        if isinstance(alts, list) and any(a in nulls for a in alts):
            rest = [a for a in alts if a not in nulls]
            if len(rest) > 1 and all(set(a) == {"type", "enum"} and a["type"] == rest[0]["type"] for a in rest):
                rest = [{"type": rest[0]["type"], "enum": [v for a in rest for v in a["enum"]]}]
            out.pop(key)
            if len(rest) == 1 and "$ref" not in rest[0]:
                out.update(rest[0])
            elif len(rest) == 1:
                out["allOf"] = rest
            else:
                out[key] = rest
            out["nullable"] = True
            if isinstance(out.get("enum"), list) and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]  # 3.0.3: an enum must list null to allow it
    if out.get("type") == "null":
        out.pop("type")
        out["nullable"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("examples"), list) and ("type" in out or "$ref" in out or "anyOf" in out):
        ex = out.pop("examples")
        if ex:
            out.setdefault("example", ex[0])
    return out


def render() -> str:
    from service.config import set_env_default

    set_env_default("BENTOML_DO_NOT_TRACK", "True")
    from service.app import app  # the FastAPI app alone (the BentoML class adds no route to it)

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
