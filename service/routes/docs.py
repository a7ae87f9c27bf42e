"""API docs: Swagger UI from the copy BentoML ships (nothing is loaded from the network)."""

from __future__ import annotations

import pathlib

import bentoml
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import Response
from starlette.staticfiles import StaticFiles

_SWAGGER = pathlib.Path(bentoml.__file__).parent / "_internal" / "server" / "static_content"
router = APIRouter()
router.mount("/docs/assets", StaticFiles(directory=_SWAGGER, check_dir=False), name="docs-assets")


@router.get("/docs", include_in_schema=False)
async def docs_page(request: Request) -> Response:
    return get_swagger_ui_html(
        openapi_url="/openapi.json", title=f"{request.app.title} - API docs",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js", swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon-light-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},  # the default badge calls validator.swagger.io
    )
