"""Models saved as files: torch.export archives (.pt2) give the eager model's results; TorchScript says why not."""

from __future__ import annotations

import importlib
import io
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import deepscope as ds
from _model_state import assert_unchanged, fingerprint
from conftest import TinyCNN
from deepscope.attribution.sanity import sanity_check
from deepscope.cli import main
from deepscope.featurevis.objectives import class_logit
from deepscope.hooks import HookSet

# torch.jit is deprecated since torch 2.14; TorchScript files are still read, and tested here.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")

KEEPS_TYPES = hasattr(importlib.import_module("torch.export.unflatten").InterpreterModule, "type_name")
needs_layer_types = pytest.mark.xfail(
    not KEEPS_TYPES,
    reason="this torch's torch.export keeps no layer types (and has stricter dynamic shapes): deepscope refuses .pt2",
)


def small_net() -> nn.Module:
    """The CLI's ``module:factory`` for the tests below: conv, BatchNorm, in-place ReLU, pools and a linear head."""
    return TinyCNN(num_classes=5)


def _trained_like(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = small_net().eval()
    with torch.no_grad():
        model.features[1].running_mean.uniform_(-0.2, 0.2)
        model.features[1].running_var.uniform_(0.5, 1.5)
    return model


def _any_side(name: str) -> Any:
    dim = torch.export.Dim
    return dim.AUTO if hasattr(dim, "AUTO") else 2 * dim(f"half_{name}", min=2, max=512)  # torch < 2.6: even sizes


def _exported(model: nn.Module, fixed_size: int | None = None) -> nn.Module:
    """The model through torch.export.save and load, unflattened: for any height and width, or only ``fixed_size``."""
    dims = {0: torch.export.Dim("batch")}
    if fixed_size is None:
        dims |= {2: _any_side("height"), 3: _any_side("width")}
    size = fixed_size or 16
    program = torch.export.export(model, (torch.randn(2, 3, size, size),), dynamic_shapes=(dims,))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    return torch.export.unflatten(torch.export.load(buffer))


@pytest.fixture(scope="module")
def pair() -> tuple[nn.Module, nn.Module]:
    model = _trained_like()
    return model, _exported(model)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


_FAST = {"rise": {"n_masks": 64, "cell": 4}, "occlusion": {"window": 4, "stride": 4}}


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=needs_layer_types) if m == "cam" else m for m in ds.ATTRIBUTIONS]
)
def test_every_method_explains_an_exported_model_as_the_eager_one(pair, images, method):
    eager, exported = pair
    params = dict(_FAST.get(method, {}))
    before = fingerprint(exported)
    maps = []
    for model in (eager, exported):
        if method in ("rise", "smoothgrad"):
            params["generator"] = torch.Generator().manual_seed(3)
        maps.append(ds.explain(model, images, method, target=2, **params).maps)
    assert_unchanged(before, fingerprint(exported))
    scale = maps[0].abs().amax()
    assert scale > 0
    # guided backprop / deconvnet differ from the plain gradient: they match only if the rule reached the graph's ReLUs
    torch.testing.assert_close(maps[1], maps[0], rtol=1e-5, atol=1e-6 * float(scale))


@needs_layer_types
def test_layer_analyses_of_an_exported_model_equal_the_eager_ones(pair, images):
    eager, exported = pair
    assert [(i.name, i.type, i.output_shape) for i in ds.list_layers(exported, images)] == [
        (i.name, i.type, i.output_shape) for i in ds.list_layers(eager, images)
    ]
    torch.testing.assert_close(ds.filters(exported).weights, ds.filters(eager).weights)
    curves = [ds.invariance(m, images[:2], values=[0, 2]) for m in (eager, exported)]
    assert list(curves[1].distances) == list(curves[0].distances) == ["features.0", "features"]
    inspected = [ds.inspect_layers(m, images, "features.5", k=2) for m in (eager, exported)]
    assert inspected[1].filters is not None and inspected[1].filters.layer == inspected[0].filters.layer
    assert ds.receptive_field(exported, "features.4", (3, 16, 16)) == ds.receptive_field(
        eager, "features.4", (3, 16, 16)
    )
    tops = [ds.top_activations(m, images, "features.5", channels=[0, 3], k=2) for m in (eager, exported)]
    torch.testing.assert_close(tops[1].scores, tops[0].scores)
    assert torch.equal(tops[1].boxes, tops[0].boxes)
    torch.testing.assert_close(tops[1].projections, tops[0].projections)  # DeconvNet projections: the ReLU rule
    runs = [
        ds.feature_vis(m, "features.5:1", size=16, steps=6, generator=torch.Generator().manual_seed(0))
        for m in (eager, exported)
    ]
    torch.testing.assert_close(runs[1].images, runs[0].images)


@needs_layer_types
def test_evaluation_maps_the_head_input_of_an_exported_model(pair):
    data = (torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(2)), torch.arange(12) % 5)
    eager, exported = (ds.evaluate(m, data, resamples=10) for m in pair)
    assert exported.embedding is not None and exported.embedding.layer == eager.embedding.layer == "fc (input)"
    np.testing.assert_allclose(exported.embedding.points, eager.embedding.points, rtol=1e-4, atol=1e-5)


@needs_layer_types
def test_the_cam_head_and_the_sanity_check_work_on_an_exported_model(pair, images):
    _eager, exported = pair
    cam = ds.explain(exported, images[:1], "cam", target=1, layer="features.5")
    assert cam.maps.shape == (1, 16, 16)  # the classifier rows were found on the unflattened fc
    checked = sanity_check(exported, images[:1], "gradcam", generator=torch.Generator().manual_seed(0))
    assert len(checked.layers) >= 3  # the randomisation cascade ran on a copy of the exported graph


@needs_layer_types
def test_a_fixed_size_export_explains_but_says_why_it_has_no_receptive_field():
    exported = _exported(_trained_like(), fixed_size=6)
    assert ds.explain(exported, torch.rand(2, 3, 6, 6), "gradcam").maps.shape == (2, 6, 6)
    # the 8-px field of features.4 is measured on a larger canvas, which a 6×6 graph refuses
    with pytest.raises(ValueError, match=r"larger than the 6×6 input.*dynamic height and width"):
        ds.receptive_field(exported, "features.4", (3, 6, 6))


class _GatedNet(nn.Module):
    """A squeeze-and-excitation gate written with ``mean``, GroupNorm and adaptive max-pooling: aten names differ."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.squeeze = nn.AdaptiveMaxPool2d(1)
        self.gate = nn.Conv2d(8, 8, 1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x * torch.sigmoid(self.gate(x.mean((2, 3), keepdim=True) + self.squeeze(x)))
        return self.fc(self.body(x).amax((2, 3)))


@needs_layer_types
def test_receptive_fields_of_an_exported_graph_see_its_aten_operators():
    torch.manual_seed(0)
    eager = _GatedNet().eval()
    exported = _exported(eager)
    expected = ds.receptive_field(eager, "body", (3, 16, 16))
    assert expected.size == (7, 7) and expected.jump == (2, 2)
    assert ds.receptive_field(exported, "body", (3, 16, 16)) == expected


def test_the_geometry_mode_keeps_the_aten_signatures_it_replaces():
    from deepscope.receptive import _GeometryMode

    x = torch.rand(1, 2, 6, 6)
    aten = torch.ops.aten
    with _GeometryMode():
        adaptive = aten.adaptive_max_pool2d.default(x, [3, 3])  # aten returns (values, indices)
        pooled = aten.max_pool2d.default(x, [2, 2])
        paired = aten.max_pool2d_with_indices.default(x, [2, 2])
        normalised = aten.group_norm.default(x, 2)
    assert isinstance(adaptive, tuple) and torch.equal(adaptive[0], torch.nn.functional.avg_pool2d(x, 2))
    assert torch.equal(pooled, torch.nn.functional.avg_pool2d(x, 2))
    assert isinstance(paired, tuple) and torch.equal(paired[0], pooled)
    assert normalised is x


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, str]:
    """The same weights as a state dict, a .pt2 archive (dynamic and fixed batch) and a TorchScript file; one image."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("models")
    model = _trained_like(seed=4)
    files = {"weights": folder / "small.pth", "pt2": folder / "small.pt2", "fixed": folder / "fixed.pt2"}
    torch.save(model.state_dict(), files["weights"])
    example = (torch.randn(2, 3, 16, 16),)
    torch.export.save(
        torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch")},)), files["pt2"]
    )
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 16, 16),)), files["fixed"])
    files["torchscript"] = folder / "small.pt"
    torch.jit.script(model).save(str(files["torchscript"]))
    files["image"] = folder / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(files["image"])
    return {key: str(path) for key, path in files.items()}


def _explain_cli(
    model: str, image: str, method: str, out, *extra: str, size: int = 16
) -> tuple[int, np.ndarray | None]:
    code = main(["explain", model, image, "-m", method, "--size", str(size), "--target", "1", "-o", str(out), *extra])
    return code, np.load(out / f"{method}.npz")["maps"] if code == 0 else None


@needs_layer_types
@pytest.mark.parametrize("method", ["gradcam", "guided_backprop"])
def test_the_cli_explains_a_pt2_file_as_the_model_it_was_exported_from(model_files, tmp_path, method):
    factory = f"{__name__}:small_net"
    code, expected = _explain_cli(
        factory, model_files["image"], method, tmp_path / "eager", "--weights", model_files["weights"]
    )
    assert code == 0
    code, maps = _explain_cli(model_files["pt2"], model_files["image"], method, tmp_path / "pt2", "--trust-checkpoint")
    assert code == 0
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-7)


@needs_layer_types
def test_the_cli_lists_a_pt2_files_layers_by_their_original_types(model_files, capsys):
    assert main(["layers", model_files["pt2"], "--trust-checkpoint", "--input-shape", "1,3,16,16"]) == 0
    out = capsys.readouterr().out
    assert "features.0" in out and "Conv2d" in out and "BatchNorm2d" in out and "InterpreterModule" not in out


@pytest.mark.parametrize(
    ("file", "trust", "expected"),
    [
        ("pt2", False, "torch.export.load unpickles whatever objects it holds (it can run code); if you made or trust"),
        pytest.param("fixed", True, "exported for batches of exactly 1", marks=needs_layer_types),
        (
            "torchscript",
            False,
            "spatial layers of a TorchScript model cannot be found (it takes no hooks): pass the eager model",
        ),
    ],
)
def test_model_files_deepscope_cannot_use_get_one_line_that_says_what_to_do(
    model_files, tmp_path, capsys, file, trust, expected
):
    trusted = ["--trust-checkpoint"] if trust else []
    code, _ = _explain_cli(model_files[file], model_files["image"], "gradcam", tmp_path, *trusted)
    err = capsys.readouterr().err
    assert code == 2 and expected in err and err.count("\n") == 1, err


def test_a_torchscript_file_still_gets_the_analyses_that_need_no_hooks(model_files, tmp_path):
    code, maps = _explain_cli(model_files["torchscript"], model_files["image"], "saliency", tmp_path)
    assert code == 0 and maps.shape == (1, 3, 16, 16)
    data = (torch.rand(10, 3, 16, 16), torch.arange(10) % 5)
    evaluation = ds.evaluate(torch.jit.load(model_files["torchscript"]), data, resamples=10)
    assert evaluation.metrics.confusion.sum() == 10 and evaluation.gallery.maps is None  # no Grad-CAM: no hooks


def test_a_scripted_module_is_refused_by_the_hook_set_with_the_way_out():
    scripted = torch.jit.script(nn.Sequential(nn.Linear(2, 2)))
    with HookSet() as hooks, pytest.raises(TypeError, match=r"TorchScript module \(Sequential\).*torch\.export\.save"):
        hooks.forward(scripted, lambda *_: None)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("guided_backprop", r"'guided' ReLU rule cannot reach the ReLUs of TorchScript module '\(the model\)'"),
        ("deconvnet", r"'deconvnet' ReLU rule cannot reach the ReLUs of TorchScript module"),
        ("guided_gradcam", r"TorchScript module \(ReLU\) cannot take the hooks"),  # its Grad-CAM half needs hooks
    ],
)
def test_relu_rules_refuse_a_torchscript_model_rather_than_return_its_plain_gradient(images, method, expected):
    scripted = torch.jit.script(_trained_like())
    layer = "features.5" if method == "guided_gradcam" else None
    with pytest.raises(TypeError, match=expected):
        ds.explain(scripted, images, method, target=1, layer=layer)


def test_feature_vis_refuses_a_torchscript_model_for_its_redirected_first_steps():
    with pytest.raises(TypeError, match="'redirected' ReLU rule cannot reach"):
        ds.feature_vis(torch.jit.script(_trained_like()), class_logit(1), size=16, steps=2)


@needs_layer_types
def test_a_pt2_file_exported_for_one_size_names_the_size_the_cli_must_use(model_files, tmp_path, capsys):
    _explain_cli(model_files["pt2"], model_files["image"], "saliency", tmp_path, "--trust-checkpoint", size=24)
    assert "exported for 16×16 images only: it needs --size 16" in capsys.readouterr().err
    args = ["featurevis", model_files["pt2"], "--trust-checkpoint", "-l", "features.5", "--size", "16", "--steps", "2"]
    assert main([*args, "-o", str(tmp_path / "fv")]) == 2
    assert "which transforms resize: it needs --transforms none and --size 16" in capsys.readouterr().err
    assert main([*args, "--transforms", "none", "--channels", "0", "-o", str(tmp_path / "fv")]) == 0


def test_a_torch_that_unflattens_without_layer_types_is_told_what_to_do(model_files, tmp_path, capsys, monkeypatch):
    for cls in importlib.import_module("torch.export.unflatten").InterpreterModule.__mro__:
        if "type_name" in vars(cls):
            monkeypatch.delattr(cls, "type_name")  # as on torch 2.3
    code, _ = _explain_cli(model_files["pt2"], model_files["image"], "gradcam", tmp_path, "--trust-checkpoint")
    err = capsys.readouterr().err
    assert code == 2 and f"which torch {torch.__version__} unflattens without the layers' types" in err
    assert "package.module:factory and the weights with --weights" in err
