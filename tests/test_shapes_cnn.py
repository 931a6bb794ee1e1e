"""deepscope.demos.shapes_cnn: the small CNN on synthetic shapes, its training and its weight cache."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepscope.demos import shapes_cnn
from deepscope.demos.shapes_cnn import ShapesCNN, ShapesCNNConfig, accuracy, cache_key, train_shapes_cnn

TINY = {"epochs": 1, "n_train": 64, "size": 32}  # seconds-free settings for tests that do not need accuracy


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The default model, trained once per session into a temporary cache."""
    cache = tmp_path_factory.mktemp("shapes_cnn_cache")
    model, held_out = train_shapes_cnn(cache_dir=cache)
    return model, held_out, cache


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_architecture_is_cam_ready():
    model = ShapesCNN()
    names = dict(model.named_modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    assert isinstance(names["pool"], nn.AdaptiveAvgPool2d) and isinstance(names["fc"], nn.Linear)
    acts = model.features(torch.rand(2, 3, 64, 64))
    assert acts.shape == (2, 64, 8, 8)


def test_reaches_high_held_out_accuracy(trained):
    model, held_out, _ = trained
    assert len(held_out) == 1000
    assert not model.training
    assert accuracy(model, held_out) >= 0.90  # ≈ 0.97–0.99 for seeds 0–4


def test_the_network_looks_at_the_object(trained):
    """Pointing game with the model's CAM: the maximum falls on the object far above chance (~10 % area)."""
    model, held_out, _ = trained
    with torch.no_grad():
        acts = model.features(held_out.images)  # (N, C, h, w)
        cam = torch.einsum("nc,nchw->nhw", model.fc.weight[held_out.labels], acts)  # (N, h, w)
        cam = F.interpolate(cam[:, None], size=held_out.masks.shape[-2:], mode="bilinear", align_corners=False)
    peak = cam.flatten(1).argmax(1)
    hits = held_out.masks.flatten(1).gather(1, peak[:, None]).float().mean()
    assert hits > 0.6  # 0.74 here, versus 0.10 for a random point
    assert held_out.masks.float().mean() < 0.15


def test_second_call_uses_the_cache(trained, monkeypatch):
    model, _, cache = trained

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(shapes_cnn, "_fit", no_training)
    again, _ = train_shapes_cnn(cache_dir=cache)
    assert _same_weights(model, again)
    assert not again.training
    meta = json.loads(next(cache.glob("shapes_cnn-*.json")).read_text())
    assert meta["accuracy"] >= 0.9 and meta["seconds"] > 0 and meta["config"]["seed"] == 0


def test_cache_is_loaded_with_weights_only(tmp_path, monkeypatch):
    train_shapes_cnn(cache_dir=tmp_path, **TINY)
    (weights,) = [p for p in tmp_path.iterdir() if p.suffix != ".json"]
    if weights.suffix == ".safetensors":
        assert shapes_cnn._has_safetensors()
        return
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    monkeypatch.setattr(shapes_cnn, "_fit", lambda *a, **k: pytest.fail("retrained"))
    train_shapes_cnn(cache_dir=tmp_path, **TINY)
    assert calls and all(kw.get("weights_only") is True for kw in calls)


def test_deterministic_for_a_seed_and_global_rng_untouched():
    state = torch.get_rng_state()
    a, data_a = train_shapes_cnn(seed=1, cache=False, **TINY)
    torch.manual_seed(123)  # the caller's RNG does not matter
    b, data_b = train_shapes_cnn(seed=1, cache=False, **TINY)
    c, _ = train_shapes_cnn(seed=2, cache=False, **TINY)
    torch.set_rng_state(state)
    assert _same_weights(a, b)
    assert torch.equal(data_a.images, data_b.images)
    assert not _same_weights(a, c)
    state = torch.get_rng_state()
    train_shapes_cnn(seed=3, cache=False, **TINY)
    assert torch.equal(state, torch.get_rng_state())


def test_cache_false_writes_nothing(tmp_path):
    train_shapes_cnn(cache_dir=tmp_path, cache=False, **TINY)
    assert list(tmp_path.iterdir()) == []


def test_cache_key_depends_on_the_settings():
    base = ShapesCNNConfig()
    assert cache_key(base) == cache_key(ShapesCNNConfig())
    assert len({cache_key(base), cache_key(ShapesCNNConfig(seed=1)), cache_key(ShapesCNNConfig(epochs=3))}) == 3


def test_default_cache_dir_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert shapes_cnn.default_cache_dir() == tmp_path / "deepscope"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert shapes_cnn.default_cache_dir() == tmp_path / "home" / ".cache" / "deepscope"


def test_default_cache_location_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    train_shapes_cnn(**TINY)
    assert list((tmp_path / "deepscope").glob("shapes_cnn-*"))


def test_corrupt_cache_retrains_with_a_warning(tmp_path):
    first, _ = train_shapes_cnn(cache_dir=tmp_path, **TINY)
    (weights,) = [p for p in tmp_path.iterdir() if p.suffix != ".json"]
    weights.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable cached weights"):
        again, _ = train_shapes_cnn(cache_dir=tmp_path, **TINY)
    assert _same_weights(first, again)
    assert weights.stat().st_size > 100  # rewritten


def test_device_argument():
    model, data = train_shapes_cnn(cache=False, device="cpu", **TINY)
    assert next(model.parameters()).device.type == "cpu" and data.images.device.type == "cpu"


def test_bad_settings():
    with pytest.raises(ValueError, match="epochs"):
        train_shapes_cnn(epochs=0, cache=False)
    with pytest.raises(ValueError, match="n_train"):
        train_shapes_cnn(n_train=4, cache=False)
