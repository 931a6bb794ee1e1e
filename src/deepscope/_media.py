"""Figure canvases and the files they become: PNG, GIF and MP4, each written atomically.

Layer 4 (rendering), private to :mod:`deepscope.plots`. Every figure is a ``matplotlib.figure.Figure``
on its own Agg canvas (no pyplot global state, so a notebook's backend is left alone) and output is
deterministic. Animations draw the figure once and then only redraw the artists that change (blitting
on the Agg buffer); frames stream to ffmpeg (H.264, yuv420p) and to a GIF with one fixed palette.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

_DPI = 96  # 96 px per inch: panel sizes below are whole inches of 16-pixel multiples
_PANEL_PX = 384  # 4 in; animation frame sizes are multiples of 16 (H.264 macroblocks, even for yuv420p)
_FORMATS = ("gif", "mp4")


def _formats(formats: Sequence[str]) -> list[str]:
    out = [str(f).lower().lstrip(".") for f in formats]
    unknown = sorted(set(out) - set(_FORMATS))
    if unknown:
        raise ValueError(f"unknown animation format(s) {unknown}; choose from {list(_FORMATS)}")
    return list(dict.fromkeys(out))


def _with_suffix(base: Path, suffix: str) -> Path:
    base = Path(base)
    return base.parent / f"{base.name}{suffix}"


def _check_fps(fps: int) -> None:
    if not (isinstance(fps, int | np.integer) and 1 <= fps <= 60):
        raise ValueError(f"fps must be an integer between 1 and 60, got {fps!r}")


def _figure(width_px: int, height_px: int, layout: str | None = "constrained") -> tuple[Figure, FigureCanvasAgg]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI, layout=layout)
    return fig, FigureCanvasAgg(fig)


def _single_axes(width_px: int, height_px: int) -> tuple[Figure, FigureCanvasAgg, Axes]:
    fig, canvas = _figure(width_px, height_px)
    return fig, canvas, fig.subplots()


def _rgb(canvas: FigureCanvasAgg) -> np.ndarray:
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8


def _save_png(image: np.ndarray, path: Path, colors: int = 256) -> Path:
    """Write an RGB array as a palette PNG (lossless-looking for plots, a fraction of the RGB size)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    quantized = Image.fromarray(image).quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    quantized.save(tmp, optimize=True)
    os.replace(tmp, path)
    return path


def _save_figure(fig: Figure, canvas: FigureCanvasAgg, path: Path) -> Path:
    canvas.draw()
    return _save_png(_rgb(canvas), Path(path))


def _gif_palette(samples: Iterable[np.ndarray], key_colors: Sequence[Any], colors: int = 48) -> Any:
    """One palette for every GIF frame: the exact key colours, then a median cut of sample frames."""
    from matplotlib.colors import to_rgb
    from PIL import Image

    keys = [tuple(round(255 * c) for c in to_rgb(k)) for k in ("white", "black", *key_colors)]
    sample = Image.fromarray(np.concatenate(list(samples), axis=0))
    n_cut = max(colors - len(keys), 16)
    cut = sample.quantize(n_cut, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    cut_rgb = np.asarray(cut.getpalette()[: 3 * n_cut]).reshape(-1, 3)
    entries = list(dict.fromkeys([*keys, *map(tuple, cut_rgb.tolist())]))[:256]
    flat = [v for rgb in entries for v in rgb]
    palette = Image.new("P", (1, 1))
    palette.putpalette(flat + flat[-3:] * (256 - len(entries)))
    return palette


def _animate(
    fig: Figure,
    canvas: FigureCanvasAgg,
    animated: Sequence[Artist],
    update: Callable[[int], None],
    n_frames: int,
    out_base: Path,
    formats: Sequence[str],
    fps: int,
    key_colors: Sequence[Any],
) -> list[Path]:
    """Blit ``n_frames`` frames and stream them to GIF/MP4; also write ``<out_base>_last.png``."""
    import imageio_ffmpeg
    from PIL import Image

    for artist in animated:
        artist.set_animated(True)
    canvas.draw()  # static background: axes, ticks, labels, legend, colour bar (animated artists skipped)
    background = canvas.copy_from_bbox(fig.bbox)

    def render(i: int) -> np.ndarray:
        canvas.restore_region(background)
        update(i)
        for artist in animated:
            fig.draw_artist(artist)
        return _rgb(canvas)

    last = render(n_frames - 1)
    first = render(0)
    height, width = first.shape[:2]
    if width % 2 or height % 2:  # cannot happen with the sizes used here, but yuv420p needs it
        raise RuntimeError(f"frame size {width}x{height} is not even")
    out_base = Path(out_base)
    out_base.parent.mkdir(parents=True, exist_ok=True)
    finals = {fmt: _with_suffix(out_base, f".{fmt}") for fmt in formats}
    tmps = {fmt: path.with_name(f".{path.name}.tmp.{fmt}") for fmt, path in finals.items()}
    palette = _gif_palette([first, last], key_colors) if "gif" in formats else None
    gif_frames = []  # quantized frames, kept until the end (Pillow writes a GIF in one call)
    writer = None
    try:
        if "mp4" in formats:
            writer = imageio_ffmpeg.write_frames(
                str(tmps["mp4"]),
                (width, height),
                fps=fps,
                codec="libx264",
                pix_fmt_out="yuv420p",
                quality=None,
                macro_block_size=2,
                output_params=["-crf", "28", "-preset", "veryfast", "-fflags", "+bitexact"],
            )
            writer.send(None)
        for i in range(n_frames):
            frame = first if i == 0 else last if i == n_frames - 1 else render(i)
            if writer is not None:
                writer.send(frame.tobytes())  # ffmpeg encodes in its own process while we draw the next frame
            if palette is not None:
                gif_frames.append(Image.fromarray(frame).quantize(palette=palette, dither=Image.Dither.NONE))
        if writer is not None:
            writer.close()
            writer = None
        if gif_frames:
            durations = [round(1000 / fps)] * n_frames
            durations[-1] = max(durations[-1], 1500)  # hold the final state before the loop restarts
            gif_frames[0].save(tmps["gif"], save_all=True, append_images=gif_frames[1:], duration=durations, loop=0)
        for fmt in formats:
            os.replace(tmps[fmt], finals[fmt])  # atomic: a reader never sees a half-written file
    finally:
        if writer is not None:
            writer.close()
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
    written = [finals[fmt] for fmt in formats]
    written.append(_save_png(last, _with_suffix(out_base, "_last.png")))
    return written


def _frame_size(n_panels: int, extra_width: int = 0) -> tuple[int, int]:
    return max(640, n_panels * _PANEL_PX + extra_width), 480


def _wrap(text: str, width_px: int, font_px: float = 7.5) -> str:
    return "\n".join(textwrap.wrap(text, width=max(30, int(width_px / font_px))))
