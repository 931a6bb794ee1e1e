"""Matplotlib figures and animations of training dynamics, from plain numpy arrays.

Layer 4 (rendering): numpy in, image files out. No torch import, no pyplot global state (every figure
is a ``matplotlib.figure.Figure`` on its own Agg canvas, so a notebook's backend is left alone), and
deterministic output.

Encoding (DESIGN §6): colour-blind-safe Okabe–Ito colours, and correct/wrong is never colour alone:
correct = blue filled circle, misclassified = larger vermillion cross drawn on top. True classes get
both a colour and a marker shape. Probability maps use a lightened, binned ``PuOr`` (diverging,
centred on 0.5) with a colour bar and the 0.5 decision contour.

Animations draw the figure once and then only redraw the artists that change (blitting on the Agg
buffer); frames stream to ffmpeg (H.264, yuv420p) and to a GIF with one fixed palette.

Example:
    >>> import numpy as np
    >>> from pathlib import Path
    >>> rng = np.random.default_rng(0)
    >>> run = ScatterSequence("seed 0", np.arange(5), rng.normal(size=(5, 50, 2)),
    ...                       rng.random((5, 50)) > 0.3, rng.integers(0, 2, 50), np.linspace(0.5, 0.9, 5))
    >>> paths = representation_animation([run], Path("/tmp/ds_doc/repr"), color_by="correctness")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import textwrap
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

__all__ = [
    "CLASS_COLORS",
    "CLASS_MARKERS",
    "CORRECT_COLOR",
    "WRONG_COLOR",
    "ScatterSequence",
    "decision_animation",
    "decision_snapshots",
    "loss_curves",
    "representation_animation",
    "toy_task_figure",
    "training_curves",
    "zscore",
]

CORRECT_COLOR = "#0072B2"  # Okabe–Ito blue
WRONG_COLOR = "#D55E00"  # Okabe–Ito vermillion
# class 0 = orange ("yellow" in the seed article), class 1 = blue, then the rest of Okabe–Ito
CLASS_COLORS = ("#E69F00", "#0072B2", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
CLASS_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
RUN_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_METRIC_STYLES = ("-", "--", "-.", (0, (1, 1)))
_DPI = 96  # 96 px per inch: panel sizes below are whole inches of 16-pixel multiples
_PANEL_PX = 384  # 4 in; animation frame sizes are multiples of 16 (H.264 macroblocks, even for yuv420p)
_FORMATS = ("gif", "mp4")


@dataclass(frozen=True, eq=False)
class ScatterSequence:
    """One training run's 2-D representation of a probe set over time.

    Args:
        label: Run name shown in the panel title, e.g. ``"seed 0"``.
        steps: ``(F,)`` training step of each frame.
        points: ``(F, N, 2)`` raw 2-D representation of every point at every frame.
        correct: ``(F, N)`` whether each point is classified correctly at each frame.
        labels: ``(N,)`` true class of each point (non-negative integers).
        accuracy: ``(F,)`` accuracy in ``[0, 1]`` at each frame.
    """

    label: str
    steps: np.ndarray
    points: np.ndarray
    correct: np.ndarray
    labels: np.ndarray
    accuracy: np.ndarray

    def __post_init__(self) -> None:
        where = f"ScatterSequence {self.label!r}"
        points = np.asarray(self.points, dtype=np.float64)
        if points.ndim != 3 or points.shape[2] != 2 or points.shape[0] == 0:
            raise ValueError(f"{where}: points must have shape (F, N, 2) with F >= 1, got {points.shape}")
        n_frames, n_points = points.shape[:2]
        steps = _vector(self.steps, n_frames, "steps", where, "frames in points")
        accuracy = _vector(self.accuracy, n_frames, "accuracy", where, "frames in points").astype(np.float64)
        labels = _labels(self.labels, n_points, where)
        correct = np.asarray(self.correct)
        if correct.shape != (n_frames, n_points):
            raise ValueError(f"{where}: correct has shape {correct.shape} but points implies ({n_frames}, {n_points})")
        if np.any(~np.isfinite(accuracy)) or np.any((accuracy < 0) | (accuracy > 1)):
            raise ValueError(f"{where}: accuracy must be finite fractions in [0, 1] (not percentages)")
        for name, value in (
            ("steps", steps),
            ("points", points),
            ("correct", correct.astype(bool)),
            ("labels", labels),
            ("accuracy", accuracy),
        ):
            object.__setattr__(self, name, value)


def zscore(points: np.ndarray) -> np.ndarray:
    """Standardise each coordinate over the points axis (the last-but-one axis).

    ``z = (x - mean) / std`` per axis, so ``(F, N, 2)`` is standardised per frame and per unit. A
    coordinate with zero spread (a dead unit; std ≤ 1e-10·|mean| counts as zero) becomes 0, never NaN.
    Non-finite entries are left out of the statistics and stay NaN in the result.

    Args:
        points: Array of shape ``(..., N, D)``.

    Returns:
        float64 array of the same shape.
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"zscore needs an array of shape (..., N, D), got shape {x.shape}")
    finite = np.isfinite(x)
    count = np.maximum(finite.sum(axis=-2, keepdims=True), 1)
    mean = np.where(finite, x, 0.0).sum(axis=-2, keepdims=True) / count
    dev = np.where(finite, x - mean, 0.0)
    std = np.sqrt((dev**2).sum(axis=-2, keepdims=True) / count)
    spread = (std > 0) & (std > 1e-10 * np.abs(mean))
    z = np.divide(dev, std, out=np.zeros_like(dev), where=spread & finite)
    return np.where(finite, z, np.nan)


# --------------------------------------------------------------------------- validation helpers


def _vector(values: Any, length: int, name: str, where: str, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise ValueError(f"{where}: {name} has shape {arr.shape} but there are {length} {what}")
    return arr


def _labels(labels: Any, n_points: int, where: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{where}: labels must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n_points:
        raise ValueError(f"{where}: points has {n_points} rows but labels has {arr.shape[0]}")
    if arr.size and (not np.all(np.equal(np.mod(arr, 1), 0)) or arr.min() < 0):
        raise ValueError(f"{where}: labels must be non-negative integers")
    return arr.astype(np.int64)


def _class_names(class_names: Sequence[str] | None, labels: np.ndarray) -> list[str]:
    n_classes = max(int(labels.max()) + 1 if labels.size else 0, 2)
    if class_names is None:
        return [f"class {k}" for k in range(n_classes)]
    names = [str(name) for name in class_names]
    if len(names) < n_classes:
        raise ValueError(f"labels contain class {n_classes - 1} but only {len(names)} class_names were given")
    if len(names) > len(CLASS_COLORS):
        raise ValueError(f"at most {len(CLASS_COLORS)} classes can be told apart by colour and marker")
    return names


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


# --------------------------------------------------------------------------- rendering helpers


def _figure(width_px: int, height_px: int, layout: str | None = "constrained") -> tuple[Figure, FigureCanvasAgg]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI, layout=layout)
    return fig, FigureCanvasAgg(fig)


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


def _limits(values: np.ndarray, pad: float = 0.05) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return -1.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    span = hi - lo if hi > lo else 1.0
    return lo - pad * span, hi + pad * span


def _class_handles(names: Sequence[str], counts: Sequence[int] | None = None, edge: str = "none") -> list[Artist]:
    from matplotlib.lines import Line2D

    handles = []
    for k, name in enumerate(names):
        label = name if counts is None else f"{name} ({counts[k]}, {counts[k] / max(sum(counts), 1):.1%})"
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker=CLASS_MARKERS[k],
                markersize=6,
                markerfacecolor=CLASS_COLORS[k],
                markeredgecolor=edge,
                markeredgewidth=0.5,
                label=label,
            )
        )
    return handles


# --------------------------------------------------------------------------- representation animation


def representation_animation(
    runs: Sequence[ScatterSequence],
    out_base: Path,
    *,
    color_by: Literal["correctness", "class"],
    class_names: Sequence[str] | None = None,
    layer: str = "",
    fps: int = 10,
    formats: Sequence[str] = _FORMATS,
) -> list[Path]:
    """Animate each run's 2-D representation of every probe point, runs side by side.

    Each frame z-scores every panel's points per axis (:func:`zscore`); axis limits are fixed per panel
    and cover every point of every frame, so nothing leaves the view.

    Args:
        runs: 1 to 4 runs with the same number of frames.
        out_base: Output path without extension; writes ``.gif``, ``.mp4`` and ``_last.png`` next to it.
        color_by: ``"correctness"`` (blue circle = correct, vermillion cross = misclassified) or
            ``"class"`` (true-class colour and marker).
        class_names: Names of the classes (default ``"class 0"``, ``"class 1"``, ...).
        layer: Name of the layer shown, for the title.
        fps: Frames per second.
        formats: Any of ``"gif"`` and ``"mp4"``.

    Returns:
        The paths written, in ``formats`` order, then the last-frame PNG.
    """
    from matplotlib.lines import Line2D

    runs = list(runs)
    if not 1 <= len(runs) <= 4 or not all(isinstance(r, ScatterSequence) for r in runs):
        raise ValueError(f"runs must be 1 to 4 ScatterSequence objects, got {len(runs)} items")
    if color_by not in ("correctness", "class"):
        raise ValueError(f"color_by must be 'correctness' or 'class', got {color_by!r}")
    fmts = _formats(formats)
    _check_fps(fps)
    n_frames = runs[0].points.shape[0]
    for run in runs:
        if run.points.shape[0] != n_frames:
            raise ValueError(
                f"all runs need the same number of frames: {runs[0].label!r} has {n_frames}, "
                f"{run.label!r} has {run.points.shape[0]}"
            )
    names = _class_names(class_names, np.concatenate([r.labels for r in runs]))
    zs = [zscore(r.points) for r in runs]  # each (F, N, 2)
    if any(np.isnan(z).any() for z in zs):
        warnings.warn("some points have non-finite coordinates; they are not drawn", RuntimeWarning, stacklevel=2)

    width, height = _frame_size(len(runs))
    fig, canvas = _figure(width, height)
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    what = f"{f'Layer {layer}: 2-D' if layer else '2-D'} representation of every probe point during training"
    if color_by == "correctness":
        meaning = "blue circle = correct, vermillion cross = misclassified · axes z-scored per frame"
        handles = [
            Line2D([], [], linestyle="none", marker="o", color=CORRECT_COLOR, markersize=5, label="correct"),
            Line2D(
                [],
                [],
                linestyle="none",
                marker="x",
                color=WRONG_COLOR,
                markersize=7,
                markeredgewidth=1.5,
                label="misclassified",
            ),
        ]
        key_colors = [CORRECT_COLOR, WRONG_COLOR]
    else:
        meaning = "colour and marker = true class · axes z-scored per frame"
        handles = _class_handles(names)
        key_colors = list(CLASS_COLORS[: len(names)])
    fig.suptitle(f"{_wrap(what, width)}\n{_wrap(meaning, width)}", fontsize=10.5)
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False, fontsize=9)

    animated: list[Artist] = []
    updates: list[Callable[[int], None]] = []
    for ax, run, z in zip(axes, runs, zs, strict=True):
        ax.set_xlim(*_limits(z[..., 0]))
        ax.set_ylim(*_limits(z[..., 1]))
        ax.set_xlabel("unit 1 (z-score)")
        ax.set_ylabel("unit 2 (z-score)")
        ax.tick_params(labelsize=8)
        ax.grid(True, color="0.92", linewidth=0.6)
        ax.set_axisbelow(True)
        title = ax.set_title(_panel_title(run, 0), fontsize=9)
        empty = np.empty((0, 2))
        if color_by == "correctness":
            ok = ax.scatter(empty[:, 0], empty[:, 1], s=9, marker="o", color=CORRECT_COLOR, linewidths=0, zorder=2)
            bad = ax.scatter(empty[:, 0], empty[:, 1], s=22, marker="x", color=WRONG_COLOR, linewidths=1.1, zorder=3)
            artists = [ok, bad]
        else:
            artists = [
                ax.scatter(
                    empty[:, 0],
                    empty[:, 1],
                    s=10 if k == 0 else 14,
                    marker=CLASS_MARKERS[k],
                    color=CLASS_COLORS[k],
                    linewidths=0,
                    zorder=2 + k,
                )
                for k in range(len(names))
            ]
        animated += [*artists, title]
        updates.append(_scatter_updater(run, z, artists, title, color_by))

    def update(i: int) -> None:
        for fn in updates:
            fn(i)

    return _animate(fig, canvas, animated, update, n_frames, out_base, fmts, fps, key_colors)


def _panel_title(run: ScatterSequence, i: int) -> str:
    return f"{run.label} — step {int(run.steps[i])} — accuracy {run.accuracy[i]:.1%}"


def _scatter_updater(
    run: ScatterSequence, z: np.ndarray, artists: list[Any], title: Artist, color_by: str
) -> Callable[[int], None]:
    finite = np.isfinite(z).all(axis=-1)  # (F, N)
    if color_by == "correctness":
        masks = [lambda i: run.correct[i], lambda i: ~run.correct[i]]
    else:
        masks = [lambda i, k=k: run.labels == k for k in range(len(artists))]

    def update(i: int) -> None:
        title.set_text(_panel_title(run, i))
        for artist, mask in zip(artists, masks, strict=True):
            artist.set_offsets(z[i][mask(i) & finite[i]])

    return update


# --------------------------------------------------------------------------- decision maps


def _probability_cmap() -> tuple[Any, Any]:
    """Binned PuOr (orange = class 0, purple = class 1), lightened so that markers stay visible."""
    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm, ListedColormap

    base = colormaps["PuOr"]
    colors = base(np.linspace(0.12, 0.88, 10))[:, :3]
    colors = 0.45 * colors + 0.55  # blend 55 % towards white
    return ListedColormap(colors, name="deepscope_prob"), BoundaryNorm(np.linspace(0, 1, 11), 10)


def _check_grid(runs_grid: Sequence[tuple[str, np.ndarray, np.ndarray]], extent: Any) -> list:
    runs = list(runs_grid)
    if not 1 <= len(runs) <= 4:
        raise ValueError(f"runs_grid must hold 1 to 4 runs, got {len(runs)}")
    if len(extent) != 4 or not (extent[0] < extent[1] and extent[2] < extent[3]):
        raise ValueError(f"extent must be (xmin, xmax, ymin, ymax) with xmin < xmax and ymin < ymax, got {extent}")
    out = []
    for item in runs:
        if len(item) != 3:
            raise ValueError("each runs_grid item must be (label, steps, probs)")
        label, steps, probs = str(item[0]), np.asarray(item[1]), np.asarray(item[2], dtype=np.float64)
        if probs.ndim != 3 or probs.shape[0] == 0 or min(probs.shape[1:]) < 2:
            raise ValueError(f"run {label!r}: probs must have shape (F, G, G) with F >= 1, G >= 2, got {probs.shape}")
        _vector(steps, probs.shape[0], "steps", f"run {label!r}", "frames in probs")
        if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
            raise ValueError(f"run {label!r}: probs must be finite probabilities in [0, 1]")
        out.append((label, steps, probs))
    return out


def _decision_panel(
    ax: Axes,
    extent: Sequence[float],
    probs0: np.ndarray,
    points: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    size: float,
    edge: float = 0.3,
) -> tuple[Any, Any, list[Any]]:
    from matplotlib.collections import LineCollection

    cmap, norm = _probability_cmap()
    gy, gx = probs0.shape
    dx, dy = (extent[1] - extent[0]) / (gx - 1), (extent[3] - extent[2]) / (gy - 1)
    image = ax.imshow(
        probs0,
        cmap=cmap,
        norm=norm,
        origin="lower",
        interpolation="bilinear",
        interpolation_stage="data",
        aspect="auto",
        extent=(extent[0] - dx / 2, extent[1] + dx / 2, extent[2] - dy / 2, extent[3] + dy / 2),
    )
    contour = ax.add_collection(LineCollection([], colors="black", linewidths=1.6, zorder=3))
    dots = [
        ax.scatter(
            points[labels == k, 0],
            points[labels == k, 1],
            s=size,
            marker=CLASS_MARKERS[k],
            color=CLASS_COLORS[k],
            edgecolors="black",
            linewidths=edge,
            zorder=4,
        )
        for k in range(n_classes)
    ]
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")
    ax.tick_params(labelsize=8)
    return image, contour, dots


def _boundary(extent: Sequence[float], probs: np.ndarray) -> list[np.ndarray]:
    import contourpy

    gy, gx = probs.shape
    xs, ys = np.linspace(extent[0], extent[1], gx), np.linspace(extent[2], extent[3], gy)
    return contourpy.contour_generator(xs, ys, probs, line_type=contourpy.LineType.Separate).lines(0.5)


def _decision_legend(fig: Figure, names: Sequence[str]) -> None:
    from matplotlib.lines import Line2D

    handles = [
        *_class_handles(names, edge="black"),
        Line2D([], [], color="black", linewidth=1.6, label=f"decision boundary P({names[1]}) = 0.5"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False, fontsize=9)


def _decision_colorbar(fig: Figure, axes: Any, names: Sequence[str]) -> None:
    from matplotlib.cm import ScalarMappable

    cmap, norm = _probability_cmap()
    bar = fig.colorbar(
        ScalarMappable(norm=norm, cmap=cmap),
        ax=axes,
        ticks=np.linspace(0, 1, 6),
        fraction=0.03,
        shrink=0.85,
        aspect=25,
        pad=0.02,
    )
    bar.set_label(f"predicted P({names[1]})")
    bar.ax.axhline(0.5, color="black", linewidth=1.6)
    bar.ax.tick_params(labelsize=8)


def _points_and_labels(points: Any, labels: Any, class_names: Sequence[str] | None) -> tuple:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {pts.shape}")
    labs = _labels(labels, pts.shape[0], "decision map")
    return pts, labs, _class_names(class_names, labs)


def decision_animation(
    runs_grid: Sequence[tuple[str, np.ndarray, np.ndarray]],
    extent: tuple[float, float, float, float],
    points: np.ndarray,
    labels: np.ndarray,
    out_base: Path,
    *,
    class_names: Sequence[str] | None = None,
    fps: int = 10,
    formats: Sequence[str] = _FORMATS,
) -> list[Path]:
    """Animate each run's decision function in input space, one panel per run.

    Args:
        runs_grid: ``(label, steps (F,), probs (F, G, G))`` per run, where ``probs[f, i, j]`` is P(class 1)
            at ``(x_j, y_i)`` with ``x = linspace(xmin, xmax, G)`` and ``y = linspace(ymin, ymax, G)``.
        extent: ``(xmin, xmax, ymin, ymax)`` of the grid.
        points: ``(N, 2)`` data points, drawn in true-class colour and marker.
        labels: ``(N,)`` true classes.
        out_base: Output path without extension; writes ``.gif``, ``.mp4`` and ``_last.png``.
        class_names: Names of the classes (default ``"class 0"``, ``"class 1"``, ...).
        fps: Frames per second.
        formats: Any of ``"gif"`` and ``"mp4"``.

    Returns:
        The paths written, in ``formats`` order, then the last-frame PNG.
    """
    runs = _check_grid(runs_grid, extent)
    pts, labs, names = _points_and_labels(points, labels, class_names)
    fmts = _formats(formats)
    _check_fps(fps)
    n_frames = runs[0][2].shape[0]
    if any(r[2].shape[0] != n_frames for r in runs):
        raise ValueError("all runs in runs_grid need the same number of frames")

    width, height = _frame_size(len(runs), extra_width=96)
    fig, canvas = _figure(width, height)
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    fig.suptitle(
        _wrap(
            f"Decision function in input space during training: shading = predicted P({names[1]}), "
            "black line = 0.5 boundary, markers = true class",
            width,
        ),
        fontsize=11,
    )
    _decision_legend(fig, names)
    _decision_colorbar(fig, axes, names)
    animated: list[Artist] = []
    panels = []
    for ax, (label, steps, probs) in zip(axes, runs, strict=True):
        image, contour, dots = _decision_panel(ax, extent, probs[0], pts, labs, len(names), size=10)
        title = ax.set_title(f"{label} — step {int(steps[0])}", fontsize=9)
        animated += [image, contour, *dots, *ax.spines.values(), title]
        panels.append((label, steps, probs, image, contour, title))

    def update(i: int) -> None:
        for label, steps, probs, image, contour, title in panels:
            image.set_data(probs[i])
            contour.set_segments(_boundary(extent, probs[i]))
            title.set_text(f"{label} — step {int(steps[i])}")

    keys = [*CLASS_COLORS[: len(names)], *_probability_cmap()[0].colors]  # every colour band stays exact
    return _animate(fig, canvas, animated, update, n_frames, out_base, fmts, fps, keys)


def decision_snapshots(
    runs_grid: Sequence[tuple[str, np.ndarray, np.ndarray]],
    extent: tuple[float, float, float, float],
    points: np.ndarray,
    labels: np.ndarray,
    out_png: Path,
    *,
    n_columns: int = 5,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Static grid of decision maps: one row per run, ``n_columns`` evenly spaced training steps.

    Args:
        runs_grid: As for :func:`decision_animation`.
        extent: ``(xmin, xmax, ymin, ymax)`` of the grid.
        points: ``(N, 2)`` data points.
        labels: ``(N,)`` true classes.
        out_png: PNG path to write.
        n_columns: Number of snapshots per run (fewer if a run has fewer frames).
        class_names: Names of the classes.

    Returns:
        ``out_png``.
    """
    from matplotlib.ticker import MaxNLocator

    runs = _check_grid(runs_grid, extent)
    pts, labs, names = _points_and_labels(points, labels, class_names)
    if n_columns < 1:
        raise ValueError(f"n_columns must be >= 1, got {n_columns}")
    n_cols = min(n_columns, min(r[2].shape[0] for r in runs))
    fig, canvas = _figure(160 * n_cols + 112, 160 * len(runs) + 112)
    axes = fig.subplots(len(runs), n_cols, squeeze=False, sharex=True, sharey=True)
    fig.suptitle(f"Decision function at {n_cols} moments of training (shading = predicted P({names[1]}))", fontsize=10)
    for row, (label, steps, probs) in enumerate(runs):
        frames = np.unique(np.linspace(0, probs.shape[0] - 1, n_cols).round().astype(int))
        for col, ax in enumerate(axes[row]):
            if col >= len(frames):
                ax.set_visible(False)
                continue
            f = frames[col]
            _, contour, _ = _decision_panel(ax, extent, probs[f], pts, labs, len(names), size=4, edge=0.15)
            contour.set_segments(_boundary(extent, probs[f]))
            ax.set_title(f"step {int(steps[f])}", fontsize=8)
            ax.label_outer()
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 5, 10]))
            ax.yaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 5, 10]))
            ax.xaxis.label.set_size(8)
            ax.yaxis.label.set_size(8)
        axes[row][0].set_ylabel(f"{label}\nx₂", fontsize=8)
    _decision_legend(fig, names)
    _decision_colorbar(fig, axes, names)
    return _save_figure(fig, canvas, Path(out_png))


# --------------------------------------------------------------------------- static figures


def training_curves(
    runs: Sequence[tuple[str, np.ndarray, Mapping[str, np.ndarray]]],
    out_png: Path,
    *,
    baseline: float | None = None,
    title: str = "Accuracy on the probe set",
    ylabel: str = "accuracy (%)",
    xlabel: str = "training step",
    percent: bool = True,
) -> Path:
    """Metric curves per run (colour = run, line style = metric) against the majority-class baseline.

    Args:
        runs: ``(label, steps (T,), {"accuracy": (T,), "balanced accuracy": (T,), ...})`` per run; values
            are fractions in ``[0, 1]`` when ``percent`` is true.
        out_png: PNG path to write.
        baseline: Majority-class accuracy (fraction), drawn as a labelled dotted line.
        title: Figure title.
        ylabel: y-axis label.
        xlabel: x-axis label, e.g. ``"training step (batches of 10)"``.
        percent: Show fractions as percentages.

    Returns:
        ``out_png``.
    """
    runs = _check_runs(runs, "runs")
    scale = 100.0 if percent else 1.0
    metrics: list[str] = []
    for label, steps, values in runs:
        if not isinstance(values, Mapping) or not values:
            raise ValueError(f"run {label!r}: metrics must be a non-empty mapping name -> values")
        for name, vals in values.items():
            _vector(vals, len(steps), f"metric {name!r}", f"run {label!r}", "steps")
            metrics += [name] if name not in metrics else []
    if len(metrics) > len(_METRIC_STYLES):
        raise ValueError(f"at most {len(_METRIC_STYLES)} metrics can be told apart by line style, got {metrics}")
    from matplotlib.lines import Line2D

    fig, canvas = _figure(864, 432)
    ax = fig.subplots()
    handles = []
    for r, (label, steps, values) in enumerate(runs):
        color = RUN_COLORS[r % len(RUN_COLORS)]
        for name, vals in values.items():
            ax.plot(
                steps,
                np.asarray(vals, dtype=np.float64) * scale,
                color=color,
                linestyle=_METRIC_STYLES[metrics.index(name)],
                linewidth=1.4,
            )
        handles.append(Line2D([], [], color=color, linewidth=2, label=label))
    handles += [Line2D([], [], color="0.3", linestyle=_METRIC_STYLES[m], label=name) for m, name in enumerate(metrics)]
    if baseline is not None:
        if not np.isfinite(baseline):
            raise ValueError(f"baseline must be finite, got {baseline}")
        text = (
            f"majority-class baseline {baseline * scale:.1f} %"
            if percent
            else f"majority-class baseline {baseline:.3g}"
        )
        ax.axhline(baseline * scale, color="black", linestyle=(0, (1, 2)), linewidth=1.5, zorder=1)
        ax.annotate(
            text,
            (1, baseline * scale),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=8,
            zorder=5,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
        )
        handles.append(Line2D([], [], color="black", linestyle=(0, (1, 2)), linewidth=1.5, label=text))
    if percent:
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, 0.0), min(hi, 100.0) if hi <= 100.0 else hi)
    _decorate(ax, title, xlabel, ylabel)
    fig.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=9)
    return _save_figure(fig, canvas, Path(out_png))


def loss_curves(
    runs: Sequence[tuple[str, np.ndarray, np.ndarray]],
    out_png: Path,
    *,
    title: str = "Training loss",
    ylabel: str = "loss",
    xlabel: str = "training step",
    log_y: bool = False,
    window: int = 1,
    reference: tuple[float, str] | None = None,
) -> Path:
    """Loss per run, optionally smoothed, with an optional labelled reference level.

    Args:
        runs: ``(label, steps (T,), loss (T,))`` per run.
        out_png: PNG path to write.
        title: Figure title.
        ylabel: y-axis label.
        xlabel: x-axis label.
        log_y: Logarithmic y axis (needs positive losses).
        window: If > 1, draw the raw loss faintly and its centred moving average over ``window`` steps.
        reference: ``(value, text)`` horizontal line, e.g. ``(0.693, "ln 2: chance-level loss")``.

    Returns:
        ``out_png``.
    """
    runs = _check_runs(runs, "runs")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    from matplotlib.lines import Line2D

    fig, canvas = _figure(864, 432)
    ax = fig.subplots()
    handles = []
    for r, (label, steps, values) in enumerate(runs):
        vals = _vector(values, len(steps), "loss", f"run {label!r}", "steps").astype(np.float64)
        if log_y and np.any(vals[np.isfinite(vals)] <= 0):
            raise ValueError(f"run {label!r}: log_y needs positive losses")
        color = RUN_COLORS[r % len(RUN_COLORS)]
        if window > 1 and len(vals) >= window:
            ax.plot(steps, vals, color=color, linewidth=0.7, alpha=0.3)
            kernel = np.ones(window) / window
            smooth = np.convolve(vals, kernel, mode="valid")
            ax.plot(steps[window // 2 : window // 2 + len(smooth)], smooth, color=color, linewidth=1.6)
        else:
            ax.plot(steps, vals, color=color, linewidth=1.4)
        handles.append(Line2D([], [], color=color, linewidth=2, label=label))
    if window > 1:
        handles.append(Line2D([], [], color="0.5", linewidth=0.7, alpha=0.5, label="raw"))
        handles.append(Line2D([], [], color="0.3", linewidth=1.6, label=f"moving average ({window} steps)"))
    if reference is not None:
        value, text = reference
        ax.axhline(value, color="black", linestyle=(0, (1, 2)), linewidth=1.5, zorder=1)
        handles.append(Line2D([], [], color="black", linestyle=(0, (1, 2)), linewidth=1.5, label=text))
    if log_y:
        ax.set_yscale("log")
    _decorate(ax, title, xlabel, ylabel)
    fig.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=9)
    return _save_figure(fig, canvas, Path(out_png))


def toy_task_figure(
    points: np.ndarray,
    labels: np.ndarray,
    out_png: Path,
    *,
    circles: Sequence[tuple[float, float, float]] = (),
    class_names: Sequence[str] | None = None,
    title: str = "The task: predict the class of a point from its position",
) -> Path:
    """The toy task: points in true-class colour and marker, the generating circles as outlines.

    Args:
        points: ``(N, 2)`` inputs.
        labels: ``(N,)`` true classes.
        out_png: PNG path to write.
        circles: ``(cx, cy, r)`` outlines of the regions that define the classes.
        class_names: Names of the classes.
        title: Figure title.

    Returns:
        ``out_png``.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle

    pts, labs, names = _points_and_labels(points, labels, class_names)
    fig, canvas = _figure(768, 576)
    ax = fig.subplots()
    for k in range(len(names)):
        sel = labs == k
        ax.scatter(
            pts[sel, 0],
            pts[sel, 1],
            s=14,
            marker=CLASS_MARKERS[k],
            color=CLASS_COLORS[k],
            edgecolors="black",
            linewidths=0.25,
            zorder=2 + k,
        )
    handles = _class_handles(names, counts=[int(np.sum(labs == k)) for k in range(len(names))], edge="black")
    for cx, cy, r in circles:
        ax.add_patch(Circle((cx, cy), r, fill=False, edgecolor="black", linestyle="--", linewidth=1.2, zorder=5))
    if circles:
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1.2, label="class-region boundary"))
    ax.set_aspect("equal")
    _decorate(ax, title, "x₁", "x₂")
    fig.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=9, title="true class")
    return _save_figure(fig, canvas, Path(out_png))


def _check_runs(runs: Sequence[tuple], name: str) -> list[tuple]:
    out = list(runs)
    if not 1 <= len(out) <= len(RUN_COLORS):
        raise ValueError(f"{name} must hold 1 to {len(RUN_COLORS)} runs, got {len(out)}")
    checked = []
    for item in out:
        if len(item) != 3:
            raise ValueError(f"each item of {name} must be (label, steps, values)")
        steps = np.asarray(item[1])
        if steps.ndim != 1 or steps.size == 0:
            raise ValueError(f"run {item[0]!r}: steps must be a non-empty 1-D array, got shape {steps.shape}")
        checked.append((str(item[0]), steps, item[2]))
    return checked


def _decorate(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)
