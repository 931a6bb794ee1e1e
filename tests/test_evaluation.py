"""deepscope.evaluate: streamed metrics against scikit-learn, the cue audit on a biased CNN, records, CLI, errors."""

import contextlib

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import build_tiny_cnn
from deepscope import _evaluation_cells
from deepscope._classification_metrics import most_confused
from deepscope._evaluation_plots import shown_classes
from deepscope.attribution.metrics import boxes_to_masks
from deepscope.cli import main
from deepscope.datasets import shapes
from deepscope.demos.shapes_cnn import ShapesCNNConfig, accuracy, train_shapes_cnn
from deepscope.evaluation import evaluate
from deepscope.report import build_report
from deepscope.store import RunReader


def _linear(features=5, classes=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 8), nn.ReLU(), nn.Linear(8, classes))


@pytest.fixture
def table(generator):
    x = torch.randn(300, 5, generator=generator)
    y = torch.randint(0, 3, (300,), generator=generator)
    return x, y


def test_streamed_metrics_equal_scikit_learn_on_the_whole_data(table):
    model = _linear()
    x, y = table
    result = evaluate(model, (x, y), ["a", "b", "c"], batch_size=64, resamples=200, max_points=100)
    with torch.no_grad():
        probs = model(x).softmax(1).numpy()
    preds = probs.argmax(1)
    assert result.metrics.accuracy.value == pytest.approx(accuracy_score(y, preds))
    assert np.array_equal(result.metrics.confusion, confusion_matrix(y, preds, labels=[0, 1, 2]))
    assert result.metrics.accuracy.low <= result.metrics.accuracy.value <= result.metrics.accuracy.high
    losses = -np.log(probs[np.arange(300), y.numpy()])
    assert result.gallery.losses[0] == pytest.approx(losses[preds != y.numpy()].max(), rel=1e-5)
    assert np.all(np.diff(result.gallery.losses) <= 0)  # worst first
    assert np.mean(losses) == pytest.approx(log_loss(y, probs, labels=[0, 1, 2]), rel=1e-5)
    assert result.gallery.maps is None and len(result.gallery.indices) == 12  # no spatial layer: no maps
    assert result.embedding is not None and result.embedding.points.shape == (100, 2)  # evenly spaced subsample
    assert result.embedding.layer == "2 (input)"
    loader = DataLoader(TensorDataset(x, y), batch_size=50)  # the same numbers from a loader
    again = evaluate(model, loader, ["a", "b", "c"], resamples=200, max_points=100)
    assert np.array_equal(again.metrics.confusion, result.metrics.confusion)
    assert again.calibration.ece == pytest.approx(result.calibration.ece)
    assert [row["class"] for row in result.table()] == ["a", "b", "c"]


def test_a_tabular_evaluation_is_reported_with_its_errors_listed(table, tmp_path):
    x, y = table
    result = evaluate(_linear(), (x, y), ["a", "b", "c"], resamples=20, gallery=3)
    result.record(tmp_path / "tabular")
    page = build_report(tmp_path).read_text(encoding="utf-8")
    first = result.gallery.indices[0]
    assert "Errors (evaluation)" in page and f"Misclassified examples, largest loss first: #{first}:" in page


def test_one_logit_is_a_binary_task_with_curves(generator):
    x = torch.randn(200, 4, generator=generator)
    y = (x[:, 0] + 0.5 * torch.randn(200, generator=generator) > 0).long()
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    result = evaluate(model, (x, y), resamples=100)
    with torch.no_grad():
        score = torch.sigmoid(model(x)).flatten().numpy()
    assert result.class_names == ("0", "1")
    assert result.curves is not None and result.curves.roc_auc == pytest.approx(roc_auc_score(y, score))
    assert result.summary()["roc_auc"] == pytest.approx(result.curves.roc_auc)


@pytest.fixture(scope="module")
def shapes_cnns():
    """The clean and the biased shapes CNN (cached, shared with the spurious demo)."""
    return {label: train_shapes_cnn(cue=agreement) for label, agreement in (("clean", 0.0), ("biased", 0.95))}


def test_the_audit_flags_the_biased_cnn_and_not_the_clean_one(shapes_cnns):
    verdicts = {}
    for label, (model, held_out) in shapes_cnns.items():
        test = held_out.subset(slice(0, 400))
        agrees = (test.cues == test.labels).tolist()
        groups = ["agrees" if a else "disagrees" for a in agrees]
        result = evaluate(
            model, (test.images, test.labels), test.class_names, groups=groups, masks=test.masks, audit_samples=200,
            resamples=200,
        )  # fmt: skip
        biased_like = shapes(400, seed=99, cue=0.95, radius=ShapesCNNConfig().radius)
        verdicts[label] = (result, accuracy(model, biased_like))
    clean, clean_biased_acc = verdicts["clean"]
    biased, biased_biased_acc = verdicts["biased"]
    assert clean.audit.flagged == [] and clean.metrics.accuracy.value > 0.9
    assert biased.audit.flagged == [0, 1, 2, 3]  # every class: the attribution sits on the corner marker
    assert biased_biased_acc > 0.9 and biased.metrics.accuracy.value < 0.4  # high on biased data, chance when not
    assert biased.groups.largest_gap > 0.8 and clean.groups.largest_gap < 0.1
    assert np.all(biased.audit.per_class.value < biased.audit.class_area)  # less than a uniform map would give
    assert clean_biased_acc > 0.9
    assert len(biased.audit.example_inputs) == 16 and biased.gallery.maps is not None


def test_boxes_stand_in_for_masks_and_the_result_draws_itself(shapes_cnns):
    model, held_out = shapes_cnns["biased"]
    test = held_out.subset(slice(0, 120))
    result = evaluate(model, (test.images, test.labels), boxes=test.boxes, audit_samples=60, resamples=50)
    assert result.audit.flagged == [0, 1, 2, 3]
    boxed = boxes_to_masks(test.boxes, (64, 64))[result.audit.indices]
    assert np.allclose(result.audit.area, boxed.flatten(1).double().mean(1).numpy())  # the boxes were the region
    page = result._repr_html_()
    assert page.count('<img src="data:image/png;base64,') == 4 and "balanced_accuracy" in page
    with pytest.raises(ValueError, match="masks or boxes, not both"):
        evaluate(model, (test.images, test.labels), masks=test.masks, boxes=test.boxes)


def test_many_classes_show_the_most_confused_ones():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 60, 3000)
    preds = np.where(rng.random(3000) < 0.7, labels, rng.integers(0, 60, 3000))
    preds[labels == 7] = 42  # one glaring confusion
    confusion = confusion_matrix(labels, preds, labels=range(60))
    pairs = most_confused(confusion)
    shown = shown_classes(confusion, pairs)
    assert len(shown) <= 20 and {7, 42} <= set(shown.tolist()) and list(shown) == sorted(shown)
    assert list(shown_classes(confusion[:12, :12], pairs)) == list(range(12))  # few classes: all of them


@contextlib.contextmanager
def _left_as_it_was(model, frozen):
    """Train mode and ``frozen`` (a parameter) not requiring grad for the block; then check both, grads, hooks."""
    model.train()
    flag = frozen.requires_grad
    frozen.requires_grad_(False)
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        yield
        assert model.training and all(m.training for m in model.modules())
        assert not frozen.requires_grad
        after = [p.grad for p in model.parameters()]
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(grads, after, strict=True))
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
    finally:
        frozen.requires_grad_(flag)
        model.eval()


def test_the_model_is_left_as_it_was(shapes_cnns):
    model, held_out = shapes_cnns["clean"]
    with _left_as_it_was(model, model.fc.weight):
        result = evaluate(model, (held_out.images[:80], held_out.labels[:80]), masks=held_out.masks[:80], resamples=10)
    assert result.cells.inputs is not None and len(result.cells.indices) > 0  # the cells' inputs were fetched too


def _logits_model(classes=3):
    """A linear layer with identity weights: the inputs are the logits, exactly."""
    model = nn.Linear(classes, classes)
    with torch.no_grad():
        model.weight.copy_(torch.eye(classes))
        model.bias.zero_()
    return model


def _expected_cells(logits, labels, k):
    """Per (true, pred) cell, the positions of its ``k`` highest-loss examples (ties: earlier first), by numpy."""
    z = logits.double().numpy()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = labels.numpy()
    loss, preds = -np.log(p[np.arange(len(y)), y]), p.argmax(1)
    cells = {}
    for t in range(z.shape[1]):
        for q in range(z.shape[1]):
            members = np.flatnonzero((y == t) & (preds == q))
            if len(members):
                cells[(t, q)] = members[np.lexsort((members, -loss[members]))][:k]
    return cells, loss, preds


def _kept_by_cell(cells):
    return {
        (int(t), int(q)): cells.indices[(cells.labels == t) & (cells.preds == q)]
        for t, q in sorted(set(zip(cells.labels.tolist(), cells.preds.tolist(), strict=True)))
    }


def test_each_cell_keeps_its_highest_loss_examples_online(generator):
    x = 2 * torch.randn(300, 3, generator=generator)
    y = torch.randint(0, 3, (300,), generator=generator)
    model = _logits_model()
    with _left_as_it_was(model, model.weight):
        result = evaluate(model, (x, y), batch_size=64, cell_examples=4, resamples=10)  # five batches
    expected, loss, preds = _expected_cells(x, y, 4)
    assert np.array_equal(result.metrics.confusion, confusion_matrix(y, preds, labels=[0, 1, 2]))
    c = result.cells
    kept = _kept_by_cell(c)
    assert kept.keys() == expected.keys() and all(np.array_equal(kept[k], v) for k, v in expected.items())
    cells = c.labels * 3 + c.preds
    assert np.all(np.diff(cells) >= 0)  # grouped by cell, highest loss first inside each
    assert np.allclose(c.losses, loss[c.indices], rtol=1e-5)
    assert np.array_equal(c.labels, y.numpy()[c.indices]) and np.array_equal(c.preds, preds[c.indices])
    probs = torch.softmax(x, 1).numpy()
    assert np.allclose(c.true_probability, probs[c.indices, c.labels], rtol=1e-5)
    assert np.allclose(c.pred_probability, probs[c.indices, c.preds], rtol=1e-5)
    assert c.per_cell == 4 and len(c.indices) == c.wanted == sum(len(v) for v in expected.values())
    assert not c.capped and c.cap == 2000
    assert c.inputs is None and "not images ((3,) per example): positions and numbers only" in c.note  # tabular
    one = evaluate(model, (x, y), batch_size=300, cell_examples=4, resamples=10).cells  # one batch: the same
    assert np.array_equal(one.indices, c.indices)
    shuffled = DataLoader(TensorDataset(x, y), batch_size=50, shuffle=True)  # cannot be fetched: numbers only
    assert "cannot be fetched by position" in evaluate(model, shuffled, gallery=0, resamples=10).cells.note
    assert evaluate(model, (x, y), cell_examples=0, resamples=10).cells is None
    assert result.params["cell_examples"] == 4


def test_the_kept_examples_are_capped_every_cell_in_turn(generator, monkeypatch):
    x = torch.randn(4000, 8, generator=generator)  # 64 cells of about 60 examples, 40 wanted of each
    y = torch.randint(0, 8, (4000,), generator=generator)
    c = evaluate(_logits_model(8), (x, y), batch_size=500, cell_examples=40, gallery=0, resamples=10).cells
    expected, _, _ = _expected_cells(x, y, 40)
    assert c.wanted == sum(len(v) for v in expected.values()) > 2000
    assert len(c.indices) == c.cap == _evaluation_cells.MAX_EXAMPLES == 2000 and c.capped
    kept = _kept_by_cell(c)
    assert all(np.array_equal(v, expected[k][: len(v)]) for k, v in kept.items())  # each the worst of its cell
    sizes = {k: len(v) for k, v in kept.items()}
    assert len(sizes) == 64 and max(sizes.values()) - min(sizes.values()) <= 1  # round by round: 31 or 32 each
    fuller = [k for k, n in sizes.items() if n == max(sizes.values())]
    assert all(t != q for t, q in fuller)  # the last round's examples went to errors, not to correct ones
    monkeypatch.setattr(_evaluation_cells, "MAX_INPUT_BYTES", 10 * 4 * 3 * 8 * 8)  # ten images' worth
    images = torch.rand(60, 3, 8, 8, generator=generator)
    labels = torch.randint(0, 10, (60,), generator=generator)
    small = evaluate(build_tiny_cnn(), (images, labels), cell_examples=3, gallery=0, resamples=10).cells
    assert small.cap == len(small.indices) == 10 < small.wanted and small.capped
    assert np.array_equal(small.inputs, images[small.indices].numpy())  # the inputs as the gallery fetches them


def test_an_evaluation_is_recorded_and_reported_with_escaped_names(tmp_path, shapes_cnns):
    model, held_out = shapes_cnns["biased"]
    test = held_out.subset(slice(0, 120))
    names = ["<b>circle</b>", "square", "triangle", "cross"]
    groups = ["site <A>" if i % 2 else "site B" for i in range(120)]
    result = evaluate(
        model, (test.images, test.labels), names, groups=groups, masks=test.masks, audit_samples=40, resamples=50
    )
    run = result.record(tmp_path / "eval", name="biased")
    with RunReader(run) as reader:
        meta = reader.meta()
        assert meta["evaluation/summary"]["accuracy"] == pytest.approx(result.metrics.accuracy.value)
        assert meta["evaluation/audit"]["flagged"] == result.audit.flagged
        assert np.array_equal(reader.tensor("evaluation/confusion", 0), result.metrics.confusion)
        # the audited positions and their predictions: the dashboard places the audit's examples in their cells
        assert np.array_equal(reader.tensor("evaluation/audit/indices", 0), result.audit.indices)
        assert np.array_equal(reader.tensor("evaluation/audit/preds", 0), result.audit.preds)
        cells, kept = meta["evaluation/cells"], result.cells  # each cell's highest-loss examples, inputs as float16
        assert cells["indices"] == kept.indices.tolist() == reader.tensor("evaluation/cells/indices", 0).tolist()
        assert cells["labels"] == kept.labels.tolist() and cells["preds"] == kept.preds.tolist()
        assert cells["per_cell"] == 6 and cells["kept"] == len(kept.indices) == cells["wanted"] and cells["inputs"]
        inputs = reader.tensor("evaluation/cells/inputs", 0)
        assert inputs.dtype == np.float16 and inputs.shape == (len(kept.indices), 3, 64, 64)
        assert np.allclose(inputs, test.images[kept.indices].numpy(), atol=1e-3)
    page = build_report(tmp_path).read_text(encoding="utf-8")
    for title in ("Evaluation (biased)", "Errors (biased)", "Groups (biased)", "Spurious cues (biased)"):
        assert title in page
    assert "&lt;b&gt;circle&lt;/b&gt;" in page and "<b>circle</b>" not in page and "site &lt;A&gt;" in page


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": torch.tensor([0, 1, 5] * 10)}, r"label 5 is out of range: the model has 3 classes"),
        ({"groups": ["a"] * 29}, "groups has 29 entries but there are 30 examples"),
        ({"masks": torch.zeros(30, 4, 4)}, r"masks need image inputs \(N, C, H, W\); the inputs are \(5,\)"),
        ({"masks": torch.zeros(30, 4)}, r"masks must be a \(N, H, W\) tensor"),
        ({"class_names": ["a", "b"]}, "2 class names for a model with 3 outputs"),
        ({"gallery": -1}, "gallery must be >= 0"),
        ({"order": "random"}, "order must be 'loss' or 'confidence'"),
        ({"cell_examples": -1}, r"cell_examples must be an integer >= 0 \(examples kept per confusion cell\), got -1"),
        ({"cell_examples": 2.5}, "cell_examples must be an integer >= 0"),
        ({"cell_examples": True}, "cell_examples must be an integer >= 0"),
    ],
)
def test_bad_inputs_are_explained(generator, kwargs, message):
    x = torch.randn(30, 5, generator=generator)
    labels = kwargs.pop("labels", torch.randint(0, 3, (30,), generator=generator))
    with pytest.raises(ValueError, match=message):
        evaluate(_linear(), (x, labels), resamples=10, **kwargs)


def test_bad_image_inputs_are_explained(shapes_cnns, generator):
    model, held_out = shapes_cnns["clean"]
    images, labels = held_out.images[:20], held_out.labels[:20]
    with pytest.raises(ValueError, match=r"masks are \(32, 32\) but the inputs are \(64, 64\) pixels"):
        evaluate(model, (images, labels), masks=torch.zeros(20, 32, 32, dtype=torch.bool), resamples=10)
    with pytest.raises(ValueError, match="masks has 10 entries but there are 20 examples"):
        evaluate(model, (images, labels), masks=held_out.masks[:10], resamples=10)
    with pytest.raises(ValueError, match="data holds no example"):
        evaluate(model, (images[:0], labels[:0]), resamples=10)
    with pytest.raises(ValueError, match="cannot be matched with groups"):
        evaluate(model, DataLoader(TensorDataset(images, labels), shuffle=True), groups=["a"] * 20)
    with pytest.raises(ValueError, match="20 inputs but 19 labels"):
        evaluate(model, (images, labels[:19]))


def test_cli_evaluates_a_csv_of_images_with_groups(tmp_path, generator, monkeypatch):
    rows = ["path,label,site"]
    for i in range(12):
        pixels = (torch.rand(16, 16, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / f"img{i}.png")
        rows.append(f"img{i}.png,{['cat', 'dog'][i % 2]},{'north' if i < 6 else 'south'}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "evalnet.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), "
        "nn.Linear(4, 2))\n"
    )
    monkeypatch.chdir(tmp_path)  # a module name of its own: test_inspection imports another "tinynet"
    args = ["evaluate", "evalnet:build", "--data", str(tmp_path / "data.csv"), "--size", "16", "--out", "out"]
    assert main([*args, "--groups", "site"]) == 0
    with RunReader(tmp_path / "out" / "evaluation") as reader:
        meta = reader.meta()
        assert meta["probe/class_names"] == ["cat", "dog"] and meta["evaluation/groups"]["names"] == ["north", "south"]
        assert meta["evaluation/summary"]["examples"] == 12
    assert (tmp_path / "out" / "report.html").is_file()
    assert main([*args, "--groups", "hospital"]) == 2  # an unknown column is a usage error
