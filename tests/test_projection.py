"""Projection of representation snapshots: PCA/UMAP to 2-D, aligned frame to frame (orthogonal Procrustes)."""

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier

from deepscope.projection import procrustes_rotation, project_frames


def _rotation(angle: float) -> np.ndarray:
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def test_procrustes_recovers_a_rotation_and_a_reflection():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(50, 2))
    reference -= reference.mean(axis=0)
    for transform in (_rotation(1.1), np.diag([1.0, -1.0]) @ _rotation(-2.0)):
        moved = reference @ transform
        np.testing.assert_allclose(moved @ procrustes_rotation(moved, reference), reference, atol=1e-12)


def test_pca_frames_match_scikit_learn_up_to_sign_and_do_not_flip():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(100, 6)) * np.array([5, 2, 0.1, 0.1, 0.1, 0.1])
    mixing = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    frames = [base, -base, base @ np.diag([1, -1, 1, 1, 1, 1]), base @ mixing]  # one cloud, flipped and turned
    out = project_frames(frames)
    assert out.shape == (4, 100, 2)
    reference = PCA(n_components=2).fit_transform(base)
    signs = np.sign((out[0] * reference).sum(axis=0))
    np.testing.assert_allclose(out[0], reference * signs, atol=1e-8)
    for i in (1, 2, 3):
        np.testing.assert_allclose(out[i], out[0], atol=1e-8)


def test_two_and_one_dimensional_frames_need_no_projection():
    frames = [np.arange(10.0).reshape(5, 2), np.ones((5, 2))]
    np.testing.assert_array_equal(project_frames(frames, "umap"), np.stack(frames))
    one = project_frames([np.arange(4.0)[:, None]])
    np.testing.assert_array_equal(one[0], [[0, 0], [1, 0], [2, 0], [3, 0]])


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="valid: pca, umap"):
        project_frames([np.zeros((4, 3))], "tsne")
    with pytest.raises(ValueError, match="one \\(N, D\\) shape"):
        project_frames([np.zeros((4, 3)), np.zeros((5, 3))])
    with pytest.raises(ValueError, match="at least 3 points"):
        project_frames([np.zeros((2, 3))], "umap")


def test_umap_frames_keep_clusters_apart_and_in_place():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    base = np.eye(4, 12)[labels] * 10 + rng.normal(size=(120, 12))
    frames = [base + 0.05 * rng.normal(size=base.shape) for _ in range(4)]
    out = project_frames(frames, "umap", seed=0)
    assert out.shape == (4, 120, 2)
    for frame in out:  # each frame separates the clusters
        knn = KNeighborsClassifier(n_neighbors=5).fit(frame, labels)
        assert knn.score(frame, labels) == 1.0
    # nearly identical frames: the clusters stay where they were (UMAP shuffles points inside a blob of
    # noise, so compare centroids); independent UMAP fits move whole clusters by 50-100 % of the spread
    centroids = np.stack([[frame[labels == k].mean(axis=0) for k in range(4)] for frame in out])  # (F, 4, 2)
    spread = np.linalg.norm(centroids[0] - centroids[0].mean(axis=0), axis=1).mean()
    moves = np.linalg.norm(np.diff(centroids, axis=0), axis=2)
    assert (moves < 0.2 * spread).all(), (moves, spread)
