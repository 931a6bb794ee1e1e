from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18, vgg11

from deepscope.errors import DeepscopeError, LayerNotFoundError
from deepscope.layers import (
    LayerInfo,
    guess_spatial_layer,
    layer_names,
    list_layers,
    model_device,
    resolve_layer,
    resolve_layers,
)


class SharedReLU(nn.Module):
    """Uses one ReLU twice and has a branch that never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1 = nn.Linear(4, 6)
        self.act = nn.ReLU()
        self.alias = self.act  # the same module under a second name
        self.lin2 = nn.Linear(6, 3)
        self.unused = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.lin2(self.act(self.lin1(x))))


class TwoInputs(nn.Module):
    """Takes two inputs and returns a tuple; its LSTM also returns a nested tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 5, batch_first=True)
        self.proj = nn.Linear(2, 5)

    def forward(self, seq: torch.Tensor, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, _ = self.rnn(seq)  # (N, T, 5)
        return out[:, -1] + self.proj(extra), out


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return resnet18(weights=None)


def test_layer_names_are_named_modules_paths(tiny_cnn):
    assert layer_names(tiny_cnn) == [
        "features",
        *(f"features.{i}" for i in range(6)),
        "pool",
        "fc",
    ]


def test_resolve_layer_by_name_and_by_module(tiny_cnn):
    assert resolve_layer(tiny_cnn, "features.4") == ("features.4", tiny_cnn.features[4])
    assert resolve_layer(tiny_cnn, tiny_cnn.fc) == ("fc", tiny_cnn.fc)


def test_unknown_layer_suggests_closest_names(resnet):
    with pytest.raises(LayerNotFoundError) as info:
        resolve_layer(resnet, "layer4.1.conv3")
    err = info.value
    assert isinstance(err, DeepscopeError) and isinstance(err, KeyError)
    assert err.suggestions[0] == "layer4.1.conv2"
    assert "'layer4.1.conv2'" in str(err)
    assert resolve_layer(resnet, "layer4.1.conv2")[1] is resnet.layer4[1].conv2


def test_empty_name_is_not_a_layer(tiny_cnn):
    with pytest.raises(LayerNotFoundError):
        resolve_layer(tiny_cnn, "")


def test_foreign_module_and_root_raise_value_error(tiny_cnn):
    with pytest.raises(ValueError, match="not inside the model"):
        resolve_layer(tiny_cnn, nn.Linear(8, 10))
    with pytest.raises(ValueError, match="model itself"):
        resolve_layer(tiny_cnn, tiny_cnn)


@pytest.mark.parametrize("bad", [3, None, ["fc"], b"fc"])
def test_resolve_layer_rejects_other_types(tiny_cnn, bad):
    with pytest.raises(TypeError, match="dotted name"):
        resolve_layer(tiny_cnn, bad)


def test_shared_module_resolves_by_either_name():
    model = SharedReLU()
    assert resolve_layer(model, "alias") == ("alias", model.act)
    assert resolve_layer(model, model.act) == ("act", model.act)
    assert "alias" not in layer_names(model)  # named_modules lists a shared module once


def test_resolve_layers_keeps_order_and_drops_duplicates(tiny_cnn):
    resolved = resolve_layers(tiny_cnn, ["fc", tiny_cnn.features[0], "features.0", tiny_cnn.fc, "pool"])
    assert list(resolved) == ["fc", "features.0", "pool"]
    assert resolved["features.0"] is tiny_cnn.features[0]
    assert resolve_layers(tiny_cnn, "fc") == {"fc": tiny_cnn.fc}
    assert resolve_layers(tiny_cnn, tiny_cnn.pool) == {"pool": tiny_cnn.pool}


def test_resolve_layers_errors(tiny_cnn):
    with pytest.raises(ValueError, match="no layers"):
        resolve_layers(tiny_cnn, [])
    with pytest.raises(TypeError, match="sequence"):
        resolve_layers(tiny_cnn, 3)  # type: ignore[arg-type]
    with pytest.raises(LayerNotFoundError, match="'fc'"):
        resolve_layers(tiny_cnn, ["features.0", "fc1"])


def test_list_layers_without_input(tiny_cnn):
    tiny_cnn.features[0].requires_grad_(False)
    infos = {info.name: info for info in list_layers(tiny_cnn)}
    assert list(infos) == layer_names(tiny_cnn)
    conv = infos["features.0"]
    assert conv == LayerInfo(
        name="features.0",
        type="Conv2d",
        depth=2,
        params=3 * 4 * 9 + 4,
        params_total=3 * 4 * 9 + 4,
        trainable=0,
        output_shape=None,
        is_leaf=True,
    )
    features = infos["features"]
    assert features.params == 0 and not features.is_leaf and features.depth == 1
    assert features.params_total == 112 + 8 + (4 * 8 * 9 + 8)
    assert features.trainable == features.params_total - 112
    assert all(info.output_shape is None for info in infos.values())


def test_list_layers_output_shapes_and_leaves_only(tiny_cnn, tiny_images):
    shapes = {info.name: info.output_shape for info in list_layers(tiny_cnn, tiny_images)}
    assert shapes == {
        "features": (2, 8, 4, 4),
        "features.0": (2, 4, 8, 8),
        "features.1": (2, 4, 8, 8),
        "features.2": (2, 4, 8, 8),
        "features.3": (2, 4, 4, 4),
        "features.4": (2, 8, 4, 4),
        "features.5": (2, 8, 4, 4),
        "pool": (2, 8, 1, 1),
        "fc": (2, 10),
    }
    leaves = list_layers(tiny_cnn, tiny_images, leaves_only=True)
    assert [info.name for info in leaves] == [n for n in shapes if n != "features"]
    assert all(info.is_leaf for info in leaves)


def test_list_layers_first_call_and_uncalled_modules(generator):
    model = SharedReLU()
    shapes = {info.name: info.output_shape for info in list_layers(model, torch.randn(2, 4, generator=generator))}
    assert shapes["act"] == (2, 6)  # first of its two calls, (2, 6) then (2, 3)
    assert shapes["unused"] is None


def test_list_layers_tuple_and_dict_inputs_and_tuple_outputs(generator):
    model = TwoInputs()
    seq, extra = torch.randn(2, 7, 3, generator=generator), torch.randn(2, 2, generator=generator)
    by_position = {info.name: info.output_shape for info in list_layers(model, (seq, extra))}
    by_keyword = {info.name: info.output_shape for info in list_layers(model, {"seq": seq, "extra": extra})}
    assert by_position == by_keyword == {"rnn": (2, 7, 5), "proj": (2, 5)}


def test_list_layers_rejects_other_inputs(tiny_cnn, tiny_images):
    with pytest.raises(TypeError, match="tuple of positional inputs"):
        list_layers(tiny_cnn, [tiny_images])
    with pytest.raises(TypeError, match=r"nn\.Module"):
        list_layers(tiny_images)  # type: ignore[arg-type]


def test_list_layers_leaves_the_model_unchanged(tiny_cnn, tiny_images):
    tiny_cnn.train()
    state = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    list_layers(tiny_cnn, tiny_images)
    assert all(m.training for m in tiny_cnn.modules())
    assert all(torch.equal(v, state[k]) for k, v in tiny_cnn.state_dict().items())
    assert torch.is_grad_enabled()


def test_list_layers_runs_in_eval_mode_without_grad(tiny_cnn, tiny_images):
    seen = []
    tiny_cnn.train()
    tiny_cnn.fc.register_forward_hook(lambda m, a, o: seen.append((m.training, torch.is_grad_enabled())))
    list_layers(tiny_cnn, tiny_images)
    assert seen == [(False, False)]


def test_list_layers_counts_resnet_parameters(resnet):
    infos = list_layers(resnet)
    assert sum(info.params for info in infos) == sum(p.numel() for p in resnet.parameters())
    assert {info.name: info.depth for info in infos}["layer4.1.conv2"] == 3


def test_model_device():
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")
    buffers_only = nn.Module()
    buffers_only.register_buffer("scale", torch.ones(1, device="meta"))
    assert model_device(buffers_only) == torch.device("meta")


@pytest.mark.cuda
def test_list_layers_moves_input_to_the_model_device(tiny_cnn, tiny_images):
    model = tiny_cnn.cuda()
    assert model_device(model).type == "cuda"
    shapes = {info.name: info.output_shape for info in list_layers(model, tiny_images)}
    assert shapes["fc"] == (2, 10)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_list_layers_on_torchscript_modules(generator):
    inputs = torch.randn(2, 3, generator=generator)
    scripted = torch.jit.script(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
    assert [info.type for info in list_layers(scripted)] == ["Linear", "ReLU"]
    with pytest.warns(UserWarning, match="2 TorchScript module"):
        infos = list_layers(scripted, inputs)
    assert [info.output_shape for info in infos] == [None, None]

    mixed = nn.Sequential(nn.Linear(3, 3), torch.jit.script(nn.Linear(3, 5)))
    with pytest.warns(UserWarning, match="1 TorchScript module"):
        shapes = {info.name: (info.type, info.output_shape) for info in list_layers(mixed, inputs)}
    assert shapes == {"0": ("Linear", (2, 3)), "1": ("Linear", None)}


@pytest.mark.parametrize(
    ("build", "size", "expected"),
    [
        (lambda: resnet18(weights=None), 64, "layer4"),  # 2x2 map: the end of the trunk
        (lambda: resnet18(weights=None), 32, "layer3"),  # layer4 is 1x1 here: a larger map is preferred
        (lambda: vgg11(weights=None), 64, "features"),  # not the adaptive pool that resizes for the head
    ],
)
def test_guess_spatial_layer_picks_the_end_of_the_trunk(build, size, expected):
    assert guess_spatial_layer(build(), torch.zeros(1, 3, size, size)) == expected


def test_guess_spatial_layer_is_remembered_per_model_and_input_size():
    model = resnet18(weights=None)
    calls = []
    model.layer1.register_forward_hook(lambda *_: calls.append(1))
    assert guess_spatial_layer(model, torch.zeros(2, 3, 64, 64)) == "layer4"
    assert guess_spatial_layer(model, torch.zeros(5, 3, 64, 64)) == "layer4" and len(calls) == 1  # batch size aside
    assert guess_spatial_layer(model, torch.zeros(1, 3, 32, 32)) == "layer3" and len(calls) == 2  # new size
    model.layer4 = nn.Sequential(model.layer4)  # a changed model is looked at again
    assert guess_spatial_layer(model, torch.zeros(1, 3, 32, 32)) == "layer3" and len(calls) == 3
