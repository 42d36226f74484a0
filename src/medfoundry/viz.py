"""Pictures of results: mask overlays with contours, similarity heatmaps, thumbnails (uint8 RGB arrays)."""

from __future__ import annotations

import numpy as np

from medfoundry.io.image import MedImage


def display_rgb(image: MedImage) -> np.ndarray:
    """The image's default display as (H, W, 3) uint8."""
    pixels = image.to_display()
    return np.repeat(pixels[..., None], 3, axis=-1) if pixels.ndim == 2 else pixels[..., :3].copy()


def overlay_mask(rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 64, 64),
                 alpha: float = 0.35) -> np.ndarray:
    """Blend ``mask`` (H, W bool) over ``rgb`` and draw its outline."""
    out = rgb.astype(np.float32).copy()
    m = mask.astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(color, np.float32)
    edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
    out[edge] = color
    return out.clip(0, 255).astype(np.uint8)


def draw_box(rgb: np.ndarray, box: np.ndarray, color: tuple[int, int, int] = (64, 200, 255)) -> np.ndarray:
    """Draw an XYXY box outline (2 px) on a copy of ``rgb``."""
    out = rgb.copy()
    h, w = out.shape[:2]
    x0, y0, x1, y1 = (int(np.rint(v)) for v in box)
    x0, x1 = np.clip([x0, x1 - 1], 0, w - 1)
    y0, y1 = np.clip([y0, y1 - 1], 0, h - 1)
    for t in range(2):
        out[np.clip(y0 + t, 0, h - 1), x0:x1 + 1] = color
        out[np.clip(y1 - t, 0, h - 1), x0:x1 + 1] = color
        out[y0:y1 + 1, np.clip(x0 + t, 0, w - 1)] = color
        out[y0:y1 + 1, np.clip(x1 - t, 0, w - 1)] = color
    return out


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to a blue–green–yellow–red ramp, (…, 3) uint8."""
    v = np.clip(values, 0, 1)[..., None]
    stops = np.array([[48, 18, 59], [40, 160, 220], [120, 220, 80], [250, 200, 40], [180, 20, 10]], np.float32)
    pos = v * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = pos - lo
    return (stops[lo[..., 0]] * (1 - frac) + stops[lo[..., 0] + 1] * frac).astype(np.uint8)


def overlay_heatmap(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Upsample a (h, w) map to the image, normalise to [0, 1] and blend it in colour."""
    import torch
    import torch.nn.functional as F

    up = F.interpolate(torch.from_numpy(heat.astype(np.float32))[None, None], size=rgb.shape[:2], mode="bicubic",
                       align_corners=False)[0, 0].numpy()
    up = (up - up.min()) / max(float(up.max() - up.min()), 1e-6)
    return ((1 - alpha) * rgb + alpha * colormap(up)).clip(0, 255).astype(np.uint8)


def thumbnail(rgb: np.ndarray, size: int = 256) -> np.ndarray:
    """Shrink so the longer side is ``size`` (never enlarges)."""
    from PIL import Image

    im = Image.fromarray(rgb)
    im.thumbnail((size, size))
    return np.asarray(im)
