"""The BentoML service: recommendations with the concepts that drove them, suppressible at run time.

Run: ``RECSAE_BUNDLE=bundles/dev-ml100k bentoml serve service.service:RecSAEService``.
HTTP routes are a FastAPI app (``service.app``; routes in ``service.routes``) mounted on the
service (BentoML ``@bentoml.api`` endpoints are POST-only; ``GET /recommend?...`` needs
FastAPI). BentoML adds ``/livez``, ``/readyz`` (ready once the bundle is loaded, verified and
warmed) and ``/metrics``. This class holds what a worker serves (``settings``, ``core``);
routes reach it through ``bentoml.get_current_service`` (``service.deps``).

Imports numpy/onnxruntime parts of ``recsae`` only: never torch (tested).
"""

from __future__ import annotations

import functools
import logging
import os
import sys

import bentoml

from recsae import BundleError, ConfigError
from service import metrics as M
from service.app import app
from service.config import SERVER, SERVER_ERROR, Settings
from service.core import Core
from service.middleware import Edge, route_template
from service.reload import Reloader

__all__ = ["RecSAEService", "app"]

log = logging.getLogger("recsae.service")


def _fail_start(message: str) -> None:
    """Refuse to start: one clear line on stderr and in the log, no traceback, exit code 3."""
    log.critical("RecSAE service cannot start: %s", message)
    print(f"RecSAE service cannot start: {message}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(3)


if SERVER_ERROR is not None:  # a bad RECSAE_WORKERS, RECSAE_PORT, ...: one line, not a traceback
    # (read by `bentoml serve` itself, before any worker: its log would repeat the line)
    print(f"RecSAE service cannot start: {SERVER_ERROR}", file=sys.stderr, flush=True)
    os._exit(3)


@bentoml.service(name="recsae", workers=SERVER.workers, traffic={"timeout": 30}, http={"port": SERVER.port},
                 logging={"access": {"enabled": SERVER.access_log}})
@bentoml.asgi_app(app, path="/")
class RecSAEService:
    """Loads and verifies the bundle (RECSAE_BUNDLE), warms the request path, then serves."""

    def __init__(self) -> None:
        self.reloader = Reloader()
        try:
            self.settings = Settings.from_env()
            self.core = Core(self.settings)
            self.core.start()
        except (BundleError, ConfigError) as e:
            _fail_start(str(e))

    @bentoml.on_deployment
    def _check_bundle() -> None:  # type: ignore[misc]
        """Runs once in the `bentoml serve` main process before any worker starts: a bad bundle
        or setting stops the server with one clear message instead of a worker restart loop."""
        try:
            settings = Settings.from_env()
            core = Core(settings)
        except (BundleError, ConfigError) as e:
            print(f"RecSAE service cannot start: {e}", file=sys.stderr, flush=True)
            raise SystemExit(3) from None
        try:  # what to try on this bundle (whichever dataset `make serve` built it on)
            ds = core.bundle.manifest.get("dataset", {})
            print(f"RecSAE: serving bundle {core.bundle.version} ({ds.get('dataset', '?')}, "
                  f"{core.sae.n_latents} latents, {len(core.bundle.users.user_ids)} users)", file=sys.stderr)
            try:
                lines = core.examples(f"http://127.0.0.1:{SERVER.port}")
            except Exception as e:  # a cosmetic hint must not stop the server; say why it is missing
                lines = []
                print(f"(no example requests: {type(e).__name__}: {e})", file=sys.stderr)
            for line in lines:
                print(f"try: {line}", file=sys.stderr)
            if not settings.admin_token:
                print("admin routes (/admin/policies, /admin/reload) are off: set RECSAE_ADMIN_TOKEN=<token> "
                      "to turn them on", file=sys.stderr)
            sys.stderr.flush()
        finally:
            core.close()

    @bentoml.on_shutdown
    def _close(self) -> None:
        if getattr(self, "core", None) is not None:
            self.core.close()

    def __is_ready__(self) -> bool:
        return bool(getattr(self, "core", None) and self.core.ready)

    def __metrics__(self, content: str) -> str:
        """Append the drift series rendered at scrape time (bounded, never stale)."""
        return content.rstrip("\n") + "\n" + self.core.drift.exposition()


@functools.cache
def docs_json() -> dict:
    """BentoML's OpenAPI document (the app's routes plus /livez, /readyz, /metrics) as valid 3.0."""
    from service.openapi import to_openapi_30

    return to_openapi_30(RecSAEService.openapi_spec.asdict())


RecSAEService.add_asgi_middleware(Edge, api=app, docs_json=docs_json)
M.bound_endpoint_labels(functools.partial(route_template, app))
