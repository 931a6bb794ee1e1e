"""Project a sequence of representation snapshots to 2-D, aligned frame to frame so animations stay still.

Each snapshot ``(N, D)`` of a layer is reduced to ``(N, 2)`` on its own — with PCA (exact, fast,
the default) or UMAP (neighbourhoods, for curved manifolds; needs ``pip install deepscope[umap]``)
— and aligned to the previous frame: a projection is only defined up to rotation and sign, and
without alignment an animation flips and spins between frames although the representation barely
moved. PCA frames are rotated or reflected onto the previous one by orthogonal Procrustes; UMAP
frames are embedded together by umap-learn's ``AlignedUMAP``, which ties each point to itself in
the next frame (independent UMAP fits, even started from the previous layout, move whole clusters
around between frames).

Standard library, numpy and scikit-learn only (umap-learn on request); never torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

__all__ = ["PROJECTIONS", "Projection", "procrustes_rotation", "project_frames"]

Projection = Literal["pca", "umap"]
PROJECTIONS: tuple[str, ...] = ("pca", "umap")


def procrustes_rotation(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The orthogonal ``(2, 2)`` matrix ``R`` minimising ‖points·R − reference‖ (both centred ``(N, 2)``)."""
    u, _, vt = np.linalg.svd(points.T @ reference)
    return u @ vt


def project_frames(
    frames: Sequence[np.ndarray], method: Projection = "pca", *, seed: int = 0, n_neighbors: int = 15
) -> np.ndarray:
    """Stack ``(N, D)`` snapshots into ``(F, N, 2)`` aligned coordinates.

    Two-dimensional frames are returned as they are (a 2-unit bottleneck needs no projection) and
    one-dimensional ones get a zero second coordinate.

    Args:
        frames: the snapshots, in step order, all of the same shape ``(N, D)``.
        method: ``"pca"`` (each frame's top two principal components) or ``"umap"``.
        seed: random state of UMAP, so a report is reproducible.
        n_neighbors: UMAP's neighbourhood size (capped at ``N - 1``).

    Raises:
        ValueError: an unknown method, frames of different shapes, or fewer than 3 points for UMAP.
        ImportError: ``method="umap"`` without umap-learn installed.
    """
    if method not in PROJECTIONS:
        raise ValueError(f"unknown projection {method!r}; valid: {', '.join(PROJECTIONS)}")
    shapes = {np.shape(f) for f in frames}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"frames must all have one (N, D) shape, got {sorted(shapes)}")
    stacked = np.stack([np.asarray(f, dtype=np.float64) for f in frames])  # (F, N, D)
    if stacked.shape[2] == 2:
        return stacked
    if stacked.shape[2] == 1:
        return np.concatenate([stacked, np.zeros_like(stacked)], axis=2)
    if method == "umap":
        return _aligned_umap(stacked, seed, n_neighbors)
    out = np.empty((*stacked.shape[:2], 2))
    previous: np.ndarray | None = None
    for i, frame in enumerate(stacked):
        centred = frame - frame.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        points = centred @ vt[:2].T  # the frame's top two principal components
        if previous is not None:
            points = points @ procrustes_rotation(points, previous)
        out[i] = previous = points
    return out


def _aligned_umap(stacked: np.ndarray, seed: int, n_neighbors: int) -> np.ndarray:
    """UMAP of every frame at once (umap-learn's AlignedUMAP: each point is tied to itself in the next frame)."""
    n_points = stacked.shape[1]
    if n_points < 3:  # checked before the import, which compiles for half a minute in a new environment
        raise ValueError(f"UMAP needs at least 3 points per frame, got {n_points}")
    try:
        import umap
    except ImportError as err:
        raise ImportError(
            "projection='umap' needs umap-learn: pip install 'deepscope[umap]' (or use the default 'pca')"
        ) from err
    neighbors = min(n_neighbors, n_points - 1)
    with warnings.catch_warnings():  # "n_jobs overridden by setting random_state": a seed is the point here
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        layouts = _umap_layouts(umap, stacked, seed, neighbors)
    return np.stack([np.asarray(p, dtype=np.float64) - np.mean(p, axis=0) for p in layouts])


def _umap_layouts(umap: Any, stacked: np.ndarray, seed: int, neighbors: int) -> list[np.ndarray]:
    n_frames, n_points = stacked.shape[:2]
    if n_frames == 1:
        return [umap.UMAP(n_neighbors=neighbors, random_state=seed).fit_transform(stacked[0])]
    same_point = {i: i for i in range(n_points)}
    aligned = umap.AlignedUMAP(n_neighbors=neighbors, random_state=seed)
    return list(aligned.fit(list(stacked), relations=[same_point] * (n_frames - 1)).embeddings_)
