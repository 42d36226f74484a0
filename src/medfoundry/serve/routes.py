"""The HTTP API of ``medfoundry serve``, version 1 (mounted at ``/v1``; ``/api`` is a deprecated alias).

Coordinates: prompts, masks and axes are in pixels of the axial plane (x = column, y = row, from the top
left); a 2D image is its own axial plane. Mask outputs: PNG (0/255) and COCO uncompressed RLE (column-major
run lengths starting with zeros). Errors are ``{"error": <type>, "detail": <message>}`` with 400 (bad input),
401 (token), 404 (unknown image or mask), 413 (upload too large), 415 (unrecognised content) or 422
(malformed request).
"""


from typing import Annotated, Any

import numpy as np

from medfoundry.errors import InputContractError
from medfoundry.serve import masks as mk
from medfoundry.serve.store import UnknownImageError
from medfoundry.serve.views import plane_values, view_info, windows
from medfoundry.serve.workbench import Workbench

MASK_FORMATS = ("png", "nii.gz", "dcm")


def build_router(bench: Workbench) -> Any:
    """An ``APIRouter`` with every route of the API, around ``bench``."""
    from fastapi import APIRouter, File, Query, UploadFile
    from fastapi.responses import Response
    from pydantic import BaseModel, ConfigDict, Field

    from medfoundry import __version__
    from medfoundry.viz import display_rgb, overlay_heatmap, thumbnail

    router = APIRouter()

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class ClassifyRequest(Strict):
        labels: list[Annotated[str, Field(max_length=200)]] = Field(..., min_length=1, max_length=64)
        slice: int | None = Field(None, ge=0)

    class GroundRequest(Strict):
        text: str = Field(..., max_length=500)
        slice: int | None = Field(None, ge=0)

    class AskRequest(Strict):
        question: str = Field(..., max_length=2000)
        slice: int | None = Field(None, ge=0)
        max_new_tokens: int = 128

    class SegmentRequest(Strict):
        box: list[float] | None = Field(None, min_length=4, max_length=4,
                                        description="XYXY in pixels of the axial plane")
        points: list[Annotated[list[float], Field(min_length=2, max_length=3)]] | None = Field(
            None, max_length=64, description="[x, y] or [x, y, label]: label 1 object (default), 0 background")
        slice: int | None = Field(None, ge=0, description="axial slice of a volume (default: the middle one)")
        propagate: bool = Field(False, description="propagate the mask through the volume (3D)")
        png: bool = Field(True, description="also return the mask as a base64 PNG (``mask_png``); the viewer reads "
                                            "the RLE and asks for none, which saves encoding it on every click")

    def describe(stored: Any) -> dict[str, Any]:
        summary = {k: v for k, v in stored.image.summary().items() if k not in ("source", "meta")}
        return {"id": stored.id, "filename": stored.filename, "summary": summary, "slices": stored.depth,
                "views": view_info(stored.image), "windows": windows(stored.image),
                "dicom": stored.path.suffix in (".dcm", ".zip")}

    @router.get("/health")
    def health() -> dict:
        """Liveness, version and the models in use."""
        return {"status": "ok", "version": __version__, "models": bench.model_names}

    @router.get("/models")
    def models() -> list[dict]:
        """The model registry: name, family, tasks, modalities, licence."""
        from medfoundry.registry import list_models

        return [{k: r.to_dict()[k] for k in ("name", "family", "tasks", "modalities", "license")}
                for r in list_models()]

    @router.post("/images")
    def upload(file: Annotated[UploadFile, File(description="DICOM file or zipped series, NIfTI, picture, NumPy")]
               ) -> dict:
        """Store an upload by content hash (its format recognised from its bytes) and describe it."""
        return describe(bench.add_upload(file.file, file.filename or "upload"))

    @router.get("/images/{image_id}")
    def info(image_id: str) -> dict:
        """What :func:`upload` answered for this image."""
        return describe(bench.get(image_id))

    @router.delete("/images/{image_id}")
    def forget(image_id: str) -> dict:
        """Forget an image and remove its file now."""
        return {"deleted": bench.images.remove(bench.get(image_id).id)}

    @router.get("/images/{image_id}/planes/{view}/{index}", response_class=Response,
                responses={200: {"content": {"application/octet-stream": {}}}})
    def plane(image_id: str, view: str, index: int) -> Response:
        """Raw values of one plane for window/level in the client: float32 little-endian (rows × cols), or
        uint8 RGB (rows × cols × 3) for colour images; headers ``X-Rows``, ``X-Cols``, ``X-Channels``,
        ``X-Dtype``. Coronal and sagittal planes come head up."""
        values = plane_values(bench.get(image_id).image, view, index)
        channels = values.shape[2] if values.ndim == 3 else 1
        return Response(values.astype(values.dtype.newbyteorder("<")).tobytes(), media_type="application/octet-stream",
                        headers={"X-Rows": str(values.shape[0]), "X-Cols": str(values.shape[1]),
                                 "X-Channels": str(channels), "X-Dtype": values.dtype.name,
                                 "Cache-Control": "private, max-age=3600"})

    @router.get("/images/{image_id}/preview.png", response_class=Response,
                responses={200: {"content": {"image/png": {}}}})
    def preview(image_id: str, slice: Annotated[int | None, Query(ge=0)] = None,
                window: str | None = None, size: Annotated[int | None, Query(ge=16, le=1024)] = None) -> Response:
        """The axial plane through a display window (its default, a preset name or ``centre,width``), as PNG;
        ``size`` makes a thumbnail of at most that many pixels a side."""
        from medfoundry.io.window import get_window

        plane = bench.get(image_id).plane(slice)
        rgb = plane.to_display(get_window(window) if window else None)
        rgb = np.repeat(rgb[..., None], 3, axis=-1) if rgb.ndim == 2 else rgb
        return Response(mk.png_bytes(thumbnail(rgb, size) if size else rgb), media_type="image/png")

    @router.post("/images/{image_id}/classify")
    def classify(image_id: str, req: ClassifyRequest) -> dict:
        """Zero-shot label probabilities (calibrated when the server has a calibration for these labels)."""
        return bench.classify(image_id, req.labels, req.slice)

    @router.post("/images/{image_id}/ground")
    def ground(image_id: str, req: GroundRequest) -> dict:
        """Grounding heatmap of a text over the axial plane: the overlay and the heatmap (0–255), as PNG."""
        heat = bench.ground(image_id, req.text, req.slice)
        plane = bench.get(image_id).plane(req.slice)
        span = float(heat.max() - heat.min()) or 1.0
        return {"overlay_png": mk.b64_png(overlay_heatmap(display_rgb(plane), heat)),
                "heatmap_png": mk.b64_png(np.round((heat - heat.min()) / span * 255).astype(np.uint8))}

    @router.get("/images/{image_id}/similar")
    def similar(image_id: str, k: int = 5) -> dict:
        """The k most similar cases: from the server's index, else among the other uploads."""
        return {"cases": bench.similar(image_id, k), "source": "index" if bench.index is not None else "uploads"}

    @router.get("/images/{image_id}/report")
    def report(image_id: str, k: int = 1, slice: Annotated[int | None, Query(ge=0)] = None) -> dict:
        """A report retrieved from the texts of the server's index, with its sources' similarities."""
        return bench.report(image_id, k, slice)

    @router.post("/images/{image_id}/ask")
    def ask(image_id: str, req: AskRequest) -> dict:
        """An answer of the conversational model the server was started with (``--chat-model``)."""
        if not req.question.strip():
            raise InputContractError("ask a question")
        return bench.ask(image_id, req.question, req.slice, req.max_new_tokens)

    @router.post("/images/{image_id}/segment")
    def segment(image_id: str, req: SegmentRequest) -> dict:
        """A mask from a box and/or points on an axial plane, with measurements and axis end points. The
        image embedding is cached per image and slice, so further prompts only run the decoder."""
        out = bench.segment(image_id, req.box, req.points, req.slice, req.propagate)
        mask, key = out["mask"], out["slice"]
        shown = mask[key] if mask.ndim == 3 else mask
        meas = out["measurement"].to_dict()
        slices = {int(z): mk.rle_encode(mask[z]) for z in np.nonzero(mask.any(axis=(1, 2)))[0]} \
            if mask.ndim == 3 else {}
        return {"mask_id": out["mask_id"], "model": out["model"], "slice": key, "shape": list(shown.shape),
                "propagated": mask.ndim == 3,
                "mask_png": mk.b64_png(shown) if req.png else None, "rle": mk.rle_encode(shown), "slices": slices,
                "measurements": meas, "axes": out["measurement"].axes,  # drawn on the measured slice
                "axes_slice": meas["key_slice"] if mask.ndim == 3 else key}

    @router.get("/images/{image_id}/masks/{filename}", response_class=Response,
                responses={200: {"content": {"image/png": {}, "application/gzip": {}, "application/dicom": {}}}})
    def download(image_id: str, filename: str, slice: Annotated[int | None, Query(ge=0)] = None) -> Response:
        """A computed mask, ``{mask_id}.png`` (one axial plane: ``slice``, default the prompted one),
        ``{mask_id}.nii.gz`` (on the image's grid and geometry) or ``{mask_id}.dcm`` (DICOM SEG, DICOM uploads
        only)."""
        mask_id, _, fmt = filename.partition(".")
        if fmt not in MASK_FORMATS:
            raise InputContractError(f"mask format {fmt!r}: use one of {', '.join(MASK_FORMATS)}")
        stored = bench.get(image_id)
        with stored.lock:
            entry = stored.masks.get(mask_id)
        if entry is None:
            raise UnknownImageError(f"image {image_id} has no mask {mask_id!r} (masks are kept for the last 8)")
        mask, key = entry["mask"], entry["slice"]
        name = f"mask-{mask_id}"
        if fmt == "png":
            k = key if slice is None else slice
            if mask.ndim == 3 and not 0 <= (k or 0) < mask.shape[0]:
                raise InputContractError(f"slice {k} is outside the mask's 0..{mask.shape[0] - 1}")
            plane_mask = mask[k] if mask.ndim == 3 else mask
            if mask.ndim == 2 and slice not in (None, key):
                plane_mask = np.zeros_like(mask)
            return Response(mk.png_bytes(plane_mask), media_type="image/png",
                            headers={"Content-Disposition": f'attachment; filename="{name}.png"'})
        full = mk.mask_volume(stored.image, mask, key)
        if fmt == "nii.gz":
            return Response(mk.nifti_bytes(stored.image, full), media_type="application/gzip",
                            headers={"Content-Disposition": f'attachment; filename="{name}.nii.gz"'})
        from medfoundry.io.limits import max_expanded_bytes

        data = mk.dicom_seg_bytes(stored.path, stored.path.suffix, full, max_expanded_bytes())
        return Response(data, media_type="application/dicom",
                        headers={"Content-Disposition": f'attachment; filename="{name}.dcm"'})

    return router
