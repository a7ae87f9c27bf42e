"""The FastAPI app the BentoML service mounts: its routes (``service.routes``), error answers
(``service.errors``) and body size limit (``service.middleware``). Built once, at import."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from recsae import __version__
from service import errors
from service.config import SERVER
from service.middleware import BodySizeLimit
from service.routes import ROUTERS
from service.schemas import ErrorResponse

if logging.getLogger("recsae").level == logging.NOTSET:
    logging.getLogger("recsae").setLevel(logging.INFO)  # startup summary + Redis outage lines


def create_app() -> FastAPI:
    app = FastAPI(
        title="RecSAE Serve",
        version=__version__,
        description=(
            "Recommendations with the sparse-autoencoder concepts that drove them; concepts can be "
            "suppressed per request (`suppress=`; the baseline, i.e. what all users share, chiefly "
            "popularity, with `suppress_baseline=`) or by stored policy (`policy=`)."
        ),
        responses={414: {"model": ErrorResponse, "description": "URL longer than 64 KiB"}},
        docs_url=None,  # served by service.routes.docs from local assets: FastAPI's pages use a CDN
        redoc_url=None,
    )
    errors.install(app)
    app.add_middleware(BodySizeLimit, limit=SERVER.max_body_bytes)
    for router in ROUTERS:
        app.include_router(router)
    return app


app = create_app()
