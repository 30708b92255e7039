"""Canny edge maps for canny ControlNets, as diffusers' examples and the official ResAdapter code make them (OpenCV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ResAdapterRTError

DEFAULT_THRESHOLDS = (100, 200)  # diffusers' ControlNet docs and the official ResAdapter demos
EXTRA = "pip install 'resadapter-rt[controlnet]'"


def check_thresholds(low: int, high: int) -> None:
    """Hysteresis thresholds: 0 <= low <= high (OpenCV swaps them silently otherwise)."""
    if not 0 <= low <= high:
        raise ResAdapterRTError(f"canny thresholds {low}/{high} are invalid; need 0 <= --low <= --high, e.g. 100/200")


def canny_image(image: Image.Image, low: int = DEFAULT_THRESHOLDS[0], high: int = DEFAULT_THRESHOLDS[1]) -> Image.Image:
    """Edges of ``image`` (``cv2.Canny`` on its RGB pixels) as a white-on-black RGB image of the same size."""
    check_thresholds(low, high)
    try:
        import cv2
    except ImportError:
        raise ResAdapterRTError(f"canny edges need OpenCV, which is not installed; {EXTRA}") from None
    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))


def read_image(path: Path, what: str = "image") -> Image.Image:
    """An RGB image file, fully decoded, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ResAdapterRTError(f"{path}: no such {what} file; pass a PNG or JPEG file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ResAdapterRTError(f"{path}: cannot read this {what} ({reason}); pass a PNG or JPEG file") from None
