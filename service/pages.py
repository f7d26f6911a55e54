"""The pages a browser opens: the playground (GET /) and the API docs (/docs, /redoc), all
served from files shipped in the package (service/static), so they work offline. Swagger UI
and ReDoc are vendored with their licences (service/static/vendor)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
VENDOR = "/static/vendor"


def install(app: FastAPI) -> None:
    """Mount the static files and add the pages (the app must be built with docs_url=None)."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "playground" / "index.html", headers={"Cache-Control": "no-cache"})

    @router.get("/docs")
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API",
            swagger_js_url=f"{VENDOR}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{VENDOR}/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/playground/favicon.svg",
        )

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API",
            redoc_js_url=f"{VENDOR}/redoc/redoc.standalone.js",
            redoc_favicon_url="/static/playground/favicon.svg",
            with_google_fonts=False,
        )

    app.include_router(router)
