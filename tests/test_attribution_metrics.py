"""Faithfulness metrics: oracles beat random orderings, the protocol's end points, localisation scores."""

import pytest
import torch
from torch import nn

from _model_state import assert_unchanged, fingerprint
from deepscope.attribution import explain
from deepscope.attribution.metrics import (
    PerturbationCurve,
    auc,
    blur,
    boxes_to_masks,
    deletion_curve,
    energy_in_mask,
    insertion_curve,
    pointing_game,
)


class Linear(nn.Module):
    def __init__(self, shape, classes, generator):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, *shape, generator=generator))
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self, x):
        return torch.einsum("nchw,kchw->nk", x, self.weight) + self.bias


# --------------------------------------------------------------------------- AUC and curves


def test_auc_is_the_trapezoid_rule_on_unit_interval():
    assert float(auc(torch.tensor([1.0, 0.5, 0.0]))) == pytest.approx(0.5)
    assert float(auc(torch.ones(11))) == pytest.approx(1.0)
    torch.testing.assert_close(auc(torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])), torch.tensor([0.75, 0.25]))
    # Uneven points: ∫ x² on [0, 1] by trapezoids at 0, 0.5, 1 = (0 + 0.25)/2·0.5 + (0.25 + 1)/2·0.5 = 0.375.
    curve = PerturbationCurve("deletion", torch.tensor([0.0, 0.5, 1.0]), torch.tensor([[0.0, 0.25, 1.0]]),
                              "logit", [0], "zeros")  # fmt: skip
    assert float(curve.auc[0]) == pytest.approx(0.375)
    assert float(auc(torch.tensor([0.0, 0.25, 1.0]), torch.tensor([0.0, 0.5, 1.0]))) == pytest.approx(0.375)
    with pytest.raises(ValueError, match="two points"):
        auc(torch.tensor([1.0]))


@pytest.fixture
def linear_case(generator):
    x = torch.randn(3, 3, 16, 16, generator=generator)
    return Linear((3, 16, 16), 4, generator), x


def _random_orderings(generator, n=8):
    return [torch.rand(3, 16, 16, generator=generator) for _ in range(n)]


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_deletion_oracle_beats_random_orderings(linear_case, generator, score):
    model, x = linear_case
    target = model(x).argmax(1).tolist()
    oracle = (model.weight.detach()[target] * x).sum(1)  # (N, H, W): w·x per pixel, the greedy steepest drop
    best = deletion_curve(model, x, oracle, target, steps=32, score=score).auc
    random = torch.stack(
        [deletion_curve(model, x, m, target, steps=32, score=score).auc for m in _random_orderings(generator)]
    )  # (R, N)
    if score == "logit":  # the oracle minimises every point of the curve, so it beats every ordering
        assert (best < random.min(0).values).all()
    else:
        assert (best < random.mean(0)).all()


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_insertion_oracle_beats_random_orderings(linear_case, generator, score):
    model, x = linear_case
    target = model(x).argmax(1).tolist()
    oracle = (model.weight.detach()[target] * (x - blur(x))).sum(1)  # w·(x − canvas): the steepest rise
    best = insertion_curve(model, x, oracle, target, steps=32, score=score).auc
    random = torch.stack(
        [insertion_curve(model, x, m, target, steps=32, score=score).auc for m in _random_orderings(generator)]
    )
    if score == "logit":
        assert (best > random.max(0).values).all()
    else:
        assert (best > random.mean(0)).all()


def test_curves_start_and_end_where_the_protocol_says(tiny_cnn, generator):
    x = torch.randn(2, 3, 16, 16, generator=generator)
    maps = torch.randn(2, 16, 16, generator=generator)
    model = tiny_cnn.eval()
    with torch.no_grad():
        logits = model(x)
        target = logits.argmax(1)
        p = lambda images: model(images).softmax(1)[[0, 1], target]  # noqa: E731
        clean, zeros, blurred = p(x), p(torch.zeros_like(x)), p(blur(x))
    deletion = deletion_curve(model, x, maps, steps=8)
    insertion = insertion_curve(model, x, maps, steps=8)
    assert deletion.fractions.tolist() == [i / 8 for i in range(9)] and deletion.scores.shape == (2, 9)
    assert deletion.target == target.tolist() and deletion.baseline == "zeros" and insertion.baseline == "blur"
    torch.testing.assert_close(deletion.scores[:, 0], clean)
    torch.testing.assert_close(deletion.scores[:, -1], zeros)
    torch.testing.assert_close(insertion.scores[:, 0], blurred)
    torch.testing.assert_close(insertion.scores[:, -1], clean)
    # Step 2 of 8 removes the 64 top-ranked pixels, all channels at once.
    top = maps.flatten(1).argsort(1, descending=True)[:, :64]
    removed = x.flatten(2).clone()
    removed[torch.arange(2)[:, None, None], torch.arange(3)[None, :, None], top[:, None, :]] = 0
    with torch.no_grad():
        torch.testing.assert_close(deletion.scores[:, 2], p(removed.view_as(x)))
    logit = deletion_curve(model, x, maps, steps=8, score="logit")
    torch.testing.assert_close(logit.scores[:, 0], logits[[0, 1], target])


def test_curves_accept_attribution_maps_and_batch_independently(tiny_cnn, generator):
    x = torch.randn(2, 3, 16, 16, generator=generator)
    result = explain(tiny_cnn, x, "saliency")  # (N, C, H, W): summed over channels
    a = deletion_curve(tiny_cnn, x, result, steps=10, batch_size=3)
    b = deletion_curve(tiny_cnn, x, result.maps.sum(1), steps=10, batch_size=100)
    torch.testing.assert_close(a.scores, b.scores)
    c = insertion_curve(tiny_cnn, x, result, steps=10, baseline=0.5, target=[1, 2])
    assert c.target == [1, 2] and c.baseline == "0.5"


def test_curves_leave_the_model_and_inputs_unchanged(tiny_cnn, generator):
    x = torch.randn(2, 3, 16, 16, generator=generator)
    model = tiny_cnn.train()  # BatchNorm in training mode: a forward would update its statistics
    model(x).sum().backward()
    before = fingerprint(model)
    inputs = x.clone()
    deletion_curve(model, x, torch.rand(2, 16, 16, generator=generator), steps=4)
    insertion_curve(model, x, torch.rand(2, 16, 16, generator=generator), steps=4)
    assert_unchanged(before, fingerprint(model))
    assert torch.equal(x, inputs) and model.training


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"maps": torch.zeros(2, 8, 8)}, ValueError, "upsample"),
        ({"maps": torch.zeros(16, 16)}, ValueError, r"\(N, H, W\)"),
        ({"maps": torch.full((2, 16, 16), float("nan"))}, ValueError, "NaN"),
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": 1000}, ValueError, "cannot exceed"),
        ({"baseline": "noise"}, ValueError, "baseline"),
        ({"score": "softmax"}, ValueError, "score"),
    ],
)
def test_curves_reject_bad_arguments(tiny_cnn, generator, kwargs, error, match):
    x = torch.randn(2, 3, 16, 16, generator=generator)
    args = {"maps": torch.zeros(2, 16, 16), **kwargs}
    maps = args.pop("maps")
    with pytest.raises(error, match=match):
        deletion_curve(tiny_cnn, x, maps, **args)


# --------------------------------------------------------------------------- localisation


def test_boxes_become_masks_by_pixel_centres():
    masks = boxes_to_masks(torch.tensor([[1, 0, 3, 2], [0, 0, 0, 0]]), (3, 4))
    assert masks.int().tolist()[0] == [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert not masks[1].any()
    union = boxes_to_masks(torch.tensor([[[0, 0, 1, 1], [3, 2, 4, 3]]]), (3, 4))
    assert union.int().tolist()[0] == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    with pytest.raises(ValueError, match="x0 <= x1"):
        boxes_to_masks(torch.tensor([[3, 0, 1, 2]]), (3, 4))


def test_pointing_game_with_tolerance():
    masks = torch.zeros(5, 64, 64, dtype=torch.bool)
    masks[:, 20:30, 20:30] = True
    maps = torch.zeros(5, 64, 64)
    maps[0, 25, 25] = 1  # inside
    maps[1, 25, 39] = 1  # 10 px right of the box: within 15 px
    maps[2, 25, 50] = 1  # 21 px right: a miss
    maps[3, 40, 40] = 1  # diagonal distance √(11² + 11²) ≈ 15.6 px: a miss
    maps[4] = 1  # flat: maxima everywhere, most of them far from the object
    assert pointing_game(maps, masks, tolerance=15).tolist() == [True, True, False, False, False]
    # By default the paper's 15 px at 224 px scale to 64 px: 15 · 64 / 224 ≈ 4.3 px, so 10 px is a miss.
    assert pointing_game(maps, masks).tolist() == [True, False, False, False, False]
    assert pointing_game(maps, masks, tolerance=0).tolist() == [True, False, False, False, False]
    assert pointing_game(maps, masks, tolerance=16).tolist() == [True, True, False, True, False]
    boxes = torch.tensor([[20, 20, 30, 30]]).expand(5, 4)
    assert torch.equal(pointing_game(maps, boxes=boxes), pointing_game(maps, masks))
    assert not pointing_game(maps[:1], torch.zeros(1, 64, 64, dtype=torch.bool)).item()  # empty mask: a miss
    with pytest.raises(ValueError, match="exactly one"):
        pointing_game(maps, masks, boxes=boxes)


def test_energy_in_mask_counts_positive_attribution():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[:, :4, :] = True  # top half
    maps = torch.zeros(3, 8, 8)
    maps[0, :4] = 1.0
    maps[0, 4:] = 3.0  # 32 inside, 96 outside
    maps[1, :4] = 2.0
    maps[1, 4:] = -5.0  # negative attribution is ignored
    maps[2] = -1.0  # nothing positive: undefined
    energy = energy_in_mask(maps, masks)
    assert energy[:2].tolist() == [0.25, 1.0] and torch.isnan(energy[2])
    torch.testing.assert_close(energy_in_mask(maps, boxes=torch.tensor([[0, 0, 8, 4]]).expand(3, 4)), energy,
                               equal_nan=True)  # fmt: skip
    with pytest.raises(ValueError, match="must match"):
        energy_in_mask(maps, masks[:, :4])
