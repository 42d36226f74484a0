"""The web app (FastAPI): the viewer page at ``/``, the HTTP API at ``/v1`` (:mod:`medfoundry.serve.routes`;
``/api`` is kept as a deprecated alias, not in the schema), OpenAPI at ``/openapi.json`` and ``/docs``, and the
page ``medfoundry demo`` wrote at ``/demo``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medfoundry.errors import ImageWriteError, InputContractError, MedfoundryError
from medfoundry.serve import security
from medfoundry.serve.store import UnknownImageError, UnsupportedContentError, UploadTooLargeError
from medfoundry.serve.workbench import Workbench

STATIC = Path(__file__).parent / "static"
SWEEP_SECONDS = 60.0


def status_of(exc: MedfoundryError) -> int:
    """The HTTP status of a medfoundry error."""
    if isinstance(exc, UnknownImageError):
        return 404
    if isinstance(exc, UploadTooLargeError):
        return 413
    if isinstance(exc, UnsupportedContentError):
        return 415
    if isinstance(exc, InputContractError | ImageWriteError):
        return 400
    return 400


def create_app(workbench: Workbench | None = None, demo_dir: str | Path | None = None, *,
               token: str | None = None, cors_origins: Sequence[str] = ()) -> Any:
    """Build the FastAPI application around ``workbench`` (a new one by default).

    Args:
        token: when given, every route needs it as a bearer token (see :func:`security.install`).
        cors_origins: origins allowed to call the API from other pages (none by default: CORS off).
    """
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import FileResponse, JSONResponse
        from fastapi.staticfiles import StaticFiles
        from starlette.exceptions import HTTPException
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise MedfoundryError("the web app needs its extra: pip install 'medfoundry[serve]'") from exc

    from medfoundry import __version__
    from medfoundry.serve.routes import build_router

    bench = workbench or Workbench()

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> Any:
        async def sweeper() -> None:
            while True:
                await asyncio.sleep(SWEEP_SECONDS)
                bench.images.sweep()

        task = asyncio.create_task(sweeper())
        try:
            yield
        finally:
            task.cancel()

    app = FastAPI(title="medfoundry", version=__version__, lifespan=lifespan,
                  description="Medical image viewer API: uploads by content hash, prompted segmentation, zero-shot "
                              "labels, grounding, similar cases, reports. Coordinates are pixels of the axial "
                              "plane (x = column, y = row).")
    app.state.workbench = bench
    def error(exc: Exception, status: int) -> JSONResponse:
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=status)

    @app.exception_handler(MedfoundryError)
    async def medfoundry_error(_: Request, exc: MedfoundryError) -> JSONResponse:
        return error(exc, status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse({"error": "ValidationError", "detail": detail}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": "HTTPError", "detail": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:  # never a traceback, never a file name
        return JSONResponse({"error": "InternalError", "detail": type(exc).__name__}, status_code=500)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > bench.images.max_upload_bytes + (64 << 10):
            return error(UploadTooLargeError(f"upload larger than the limit of {bench.images.max_upload_bytes} "
                                             "bytes"), 413)
        return await call_next(request)

    security.install(app, token, cors_origins)  # added last: the token is checked before anything else
    app.include_router(build_router(bench), prefix="/v1", tags=["v1"])
    app.include_router(build_router(bench), prefix="/api", include_in_schema=False)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    if demo_dir is not None and Path(demo_dir, "index.html").is_file():
        app.mount("/demo", StaticFiles(directory=str(demo_dir), html=True), name="demo")
    return app
