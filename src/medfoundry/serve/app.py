"""The web app (FastAPI): upload a medical image, look at it slice by slice, draw a box, get the mask with its
measurements, zero-shot labels and a grounding heatmap; ``/demo`` shows the page ``medfoundry demo`` wrote.

Routes (JSON unless said otherwise):

- ``GET /`` the viewer page; ``GET /api/health``; ``GET /api/models`` the registry.
- ``POST /api/images`` (multipart ``file``): store and read an upload → ``{id, filename, summary, slices}``.
- ``GET /api/images/{id}/preview.png?slice=K``: the image (slice) through its display window, PNG.
- ``POST /api/images/{id}/classify`` ``{labels: [...], slice?}`` → ``{probs: {label: p}}``.
- ``POST /api/images/{id}/ground`` ``{text, slice?}`` → ``{overlay_png: base64}``.
- ``GET /api/images/{id}/similar?k=5`` → ``{cases: [{name, score, ...}]}`` from the index given to
  ``medfoundry serve --index`` (``medfoundry index build``), else among the uploads.
- ``GET /api/images/{id}/report?k=1&slice=K`` → ``{report, sources: [{text, similarity}]}``: report by
  retrieval from the texts of the ``--index`` (``medfoundry index build --texts reports.csv``).
- ``POST /api/images/{id}/ask`` ``{question, slice?, max_new_tokens?}`` → ``{answer, model, new_tokens, seconds}``
  from the conversational model given to ``medfoundry serve --chat-model`` (LLaVA-Med ...).
- ``POST /api/images/{id}/segment`` ``{box?: [x0, y0, x1, y1], points?: [[x, y, label]], slice?, propagate?}``
  (pixels of the shown slice) → ``{mask_png, overlay_png, measurements}``.

Errors are ``{"error": <type>, "detail": <message>}`` with 400 (bad input), 404 (unknown image), 413 (upload
too large) or 422 (malformed request).
"""


import base64
import io
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from PIL import Image

from medfoundry.errors import MedfoundryError
from medfoundry.serve.workbench import UnknownImageError, UploadTooLargeError, Workbench

STATIC = Path(__file__).parent / "static"


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
    return buf.getvalue()


def _b64(pixels: np.ndarray) -> str:
    return base64.b64encode(_png(pixels)).decode("ascii")


def create_app(workbench: Workbench | None = None, demo_dir: str | Path | None = None) -> Any:
    """Build the FastAPI application around ``workbench`` (a new one by default)."""
    try:
        from fastapi import FastAPI, File, Request, UploadFile
        from fastapi.responses import FileResponse, JSONResponse, Response
        from fastapi.staticfiles import StaticFiles
        from pydantic import BaseModel, Field
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise MedfoundryError("the web app needs its extra: pip install 'medfoundry[serve]'") from exc

    from medfoundry import __version__
    from medfoundry.viz import display_rgb, draw_box, overlay_heatmap, overlay_mask

    bench = workbench or Workbench()
    app = FastAPI(title="medfoundry", version=__version__)
    app.state.workbench = bench

    class ClassifyRequest(BaseModel):
        labels: list[str] = Field(..., max_length=64)
        slice: int | None = None

    class GroundRequest(BaseModel):
        text: str = Field(..., max_length=500)
        slice: int | None = None

    class AskRequest(BaseModel):
        question: str = Field(..., max_length=2000)
        slice: int | None = None
        max_new_tokens: int = 128

    class SegmentRequest(BaseModel):
        box: list[float] | None = Field(None, min_length=4, max_length=4)
        points: list[list[float]] | None = Field(None, max_length=64)
        slice: int | None = None
        propagate: bool = False

    @app.exception_handler(MedfoundryError)
    async def medfoundry_error(_: Request, exc: MedfoundryError) -> JSONResponse:
        status = 404 if isinstance(exc, UnknownImageError) else 413 if isinstance(exc, UploadTooLargeError) else 400
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=status)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "version": __version__, "models": bench.model_names}

    @app.get("/api/models")
    def models() -> list[dict]:
        from medfoundry.registry import list_models

        return [{k: r.to_dict()[k] for k in ("name", "family", "tasks", "modalities", "license")}
                for r in list_models()]

    @app.post("/api/images")
    def upload(file: Annotated[UploadFile, File()]) -> dict:
        stored = bench.add_upload(file.file, file.filename or "upload")
        summary = {**stored.image.summary(), "source": stored.filename}  # not the server's path
        return {"id": stored.id, "filename": stored.filename, "summary": summary,
                "slices": int(stored.image.array.shape[0]) if stored.image.is_volume else 1}

    @app.get("/api/images/{image_id}/preview.png")
    def preview(image_id: str, slice: int | None = None) -> Response:
        plane = bench.get(image_id).plane(slice)
        return Response(_png(display_rgb(plane)), media_type="image/png")

    @app.post("/api/images/{image_id}/classify")
    def classify(image_id: str, req: ClassifyRequest) -> dict:
        return {"probs": bench.classify(image_id, req.labels, req.slice)}

    @app.post("/api/images/{image_id}/ground")
    def ground(image_id: str, req: GroundRequest) -> dict:
        heat = bench.ground(image_id, req.text, req.slice)
        plane = bench.get(image_id).plane(req.slice)
        return {"overlay_png": _b64(overlay_heatmap(display_rgb(plane), heat))}

    @app.get("/api/images/{image_id}/similar")
    def similar(image_id: str, k: int = 5) -> dict:
        return {"cases": bench.similar(image_id, k), "source": "index" if bench.index is not None else "uploads"}

    @app.get("/api/images/{image_id}/report")
    def report(image_id: str, k: int = 1, slice: int | None = None) -> dict:
        return bench.report(image_id, k, slice)

    @app.post("/api/images/{image_id}/ask")
    def ask(image_id: str, req: AskRequest) -> dict:
        return bench.ask(image_id, req.question, req.slice, req.max_new_tokens)

    @app.post("/api/images/{image_id}/segment")
    def segment(image_id: str, req: SegmentRequest) -> dict:
        from medfoundry.tasks.measure import measure

        mask, grid, plane = bench.segment(image_id, req.box, req.points, req.slice, req.propagate)
        shown = mask[req.slice if req.slice is not None else mask.shape[0] // 2] if mask.ndim == 3 else mask
        picture = display_rgb(plane)
        if req.box is not None:
            picture = draw_box(picture, np.asarray(req.box, dtype=np.float32))
        return {"mask_png": _b64(shown.astype(np.uint8) * 255), "overlay_png": _b64(overlay_mask(picture, shown)),
                "measurements": measure(mask, grid).to_dict()}

    if demo_dir is not None and Path(demo_dir, "index.html").is_file():
        app.mount("/demo", StaticFiles(directory=str(demo_dir), html=True), name="demo")
    return app
