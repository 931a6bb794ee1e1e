from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from deepscope.targets import ClassTarget, PredictedClass, as_target


@pytest.fixture
def logits(generator) -> torch.Tensor:
    return torch.randn(4, 10, generator=generator)


def test_int_broadcasts_to_every_sample(logits):
    assert torch.equal(ClassTarget(3)(logits), logits[:, 3])


@pytest.mark.parametrize("kind", ["list", "tuple", "tensor"])
def test_one_index_per_sample(logits, kind):
    indices = [7, 0, 9, 2]
    given = {"list": indices, "tuple": tuple(indices), "tensor": torch.tensor(indices)}[kind]
    target = ClassTarget(given)
    assert target.indices == (7, 0, 9, 2)
    assert torch.equal(target(logits), logits[torch.arange(4), torch.tensor(indices)])


def test_zero_dim_tensor_and_numpy_int_are_single_indices(logits):
    assert ClassTarget(torch.tensor(5)).indices == 5
    assert ClassTarget(np.int64(5)).indices == 5
    assert torch.equal(ClassTarget(torch.tensor(5))(logits), logits[:, 5])


def test_scores_keep_the_graph(logits):
    leaf = logits.clone().requires_grad_()
    ClassTarget([1, 2, 3, 4])(leaf).sum().backward()
    expected = torch.zeros(4, 10)
    expected[torch.arange(4), torch.tensor([1, 2, 3, 4])] = 1
    assert torch.equal(leaf.grad, expected)


def test_out_of_range_message(logits):
    with pytest.raises(ValueError, match=r"class 12 is out of range for an output with 10 classes \(valid 0\.\.9\)"):
        ClassTarget(12)(logits)
    with pytest.raises(ValueError, match="class 10 is out of range"):
        ClassTarget([0, 1, 10, 2])(logits)


def test_wrong_number_of_indices(logits):
    with pytest.raises(ValueError, match="3 class indices but the output has 4 samples"):
        ClassTarget([0, 1, 2])(logits)


@pytest.mark.parametrize(
    ("indices", "error", "match"),
    [
        (-1, ValueError, ">= 0"),
        ([1, -2], ValueError, ">= 0"),
        ([], ValueError, "empty"),
        (1.0, TypeError, "int"),
        ([1, 2.5], TypeError, "int"),
        (True, TypeError, "int"),
        ("3", TypeError, "sequence of ints"),
        (torch.tensor([1.0]), TypeError, "integer tensor"),
        (torch.zeros(2, 2, dtype=torch.long), ValueError, "1-D"),
    ],
)
def test_invalid_indices(indices, error, match):
    with pytest.raises(error, match=match):
        ClassTarget(indices)


def test_single_logit_outputs(generator):
    flat = torch.randn(5, generator=generator)
    column = flat[:, None]
    assert torch.equal(ClassTarget(0)(flat), flat)
    assert torch.equal(ClassTarget(0)(column), flat)
    assert torch.equal(PredictedClass()(column), flat)
    with pytest.raises(ValueError, match=r"class 1 is out of range for an output with 1 class \(valid 0\.\.0\)"):
        ClassTarget(1)(flat)


def test_predicted_class_uses_the_argmax_of_the_output():
    out = torch.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0], [0.0, 1.0, 9.0]])
    assert torch.equal(PredictedClass()(out), torch.tensor([5.0, 7.0, 9.0]))


def test_other_output_shapes_and_types_are_rejected(generator):
    with pytest.raises(ValueError, match="callable target"):
        PredictedClass()(torch.randn(2, 3, 4, generator=generator))
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, K\)"):
        ClassTarget(0)(torch.tensor(1.0))
    with pytest.raises(TypeError, match="got tuple"):
        ClassTarget(0)((torch.zeros(2, 3),))


def test_outputs_with_a_logits_attribute(logits):
    assert torch.equal(ClassTarget(2)(SimpleNamespace(logits=logits)), logits[:, 2])


def test_targets_are_hashable_values():
    assert ClassTarget([1, 2]) == ClassTarget(torch.tensor([1, 2]))
    assert hash(ClassTarget(3)) == hash(ClassTarget(3))
    assert ClassTarget(3) != ClassTarget((3,))
    assert PredictedClass() == PredictedClass()
    assert repr(ClassTarget([1, 2])) == "ClassTarget(indices=(1, 2))"


def test_as_target_dispatch(logits):
    assert isinstance(as_target(None), PredictedClass)
    assert as_target(4) == ClassTarget(4)
    assert as_target([1, 2, 3, 4]) == ClassTarget((1, 2, 3, 4))
    assert as_target(torch.tensor([1, 2, 3, 4])) == ClassTarget((1, 2, 3, 4))

    def custom(out):
        return out[:, 0] - out[:, 1]

    assert as_target(custom) is custom
    existing = ClassTarget(1)
    assert as_target(existing) is existing


@pytest.mark.parametrize("bad", [True, "cat", 2.5, {"class": 1}])
def test_as_target_rejects_other_values(bad):
    with pytest.raises(TypeError, match=r"None \(predicted class\)|bool"):
        as_target(bad)


@pytest.mark.cuda
def test_class_target_on_the_output_device(generator):
    out = torch.randn(3, 4, generator=generator).cuda()
    scores = ClassTarget([0, 3, 1])(out)
    assert scores.device == out.device
    assert torch.equal(scores.cpu(), out.cpu()[torch.arange(3), torch.tensor([0, 3, 1])])
