"""What panels send to the browser: figures and images as PNG data URIs, arrays as JSON-safe lists.

Panels reuse the report's figure functions (``deepscope.plots`` and friends), which write a PNG to a
path; :func:`png_uri` runs one into a temporary file and returns the image inline, so the page's CSP
(``img-src 'self' data:``) is all an image needs and no file route exists to traverse.
"""

from __future__ import annotations

import base64
import io
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["image_uri", "json_floats", "png_uri"]


def png_uri(draw: Callable[[Path], Any]) -> str:
    """Run ``draw(path)`` (a figure function writing a PNG to ``path``) and return the PNG as a data URI."""
    with tempfile.TemporaryDirectory(prefix="deepscope-panel-") as tmp:
        path = Path(tmp) / "figure.png"
        draw(path)
        return _uri(path.read_bytes())


def image_uri(image: np.ndarray, *, cmap: str = "gray", vmin: float | None = None, vmax: float | None = None) -> str:
    """An image array as a PNG data URI: ``(H, W)`` through ``cmap``, ``(H, W, 3|4)`` or ``(3|4, H, W)`` as colour.

    Float colour images are clipped to [0, 1] for display only (the stored array is untouched).
    """
    import matplotlib.image

    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.dtype.kind == "f":
        array = np.clip(array, 0.0, 1.0)
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, array, cmap=cmap, vmin=vmin, vmax=vmax, format="png")
    return _uri(buffer.getvalue())


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def json_floats(values: Any) -> Any:
    """``values`` (an array of any shape) as nested lists with NaN and inf as ``None`` (JSON has neither)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        value = float(array)
        return value if math.isfinite(value) else None
    return np.where(np.isfinite(array), array, None).tolist()
