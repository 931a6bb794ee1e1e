"""The doctor: every check fires on a run broken its way and stays quiet on a healthy one; findings are stored."""

import math

import numpy as np
import pytest
import torch

from deepscope.cli import main
from deepscope.diagnostics import CHECKS, Finding, Thresholds, doctor, stored_findings
from deepscope.errors import RunLockedError, UnknownNameError
from deepscope.health import STATISTICS
from deepscope.recorder import TAGS
from deepscope.store import RunReader, RunWriter

STEPS = 200
LAYERS = ["conv1", "relu1", "conv2", "relu2", "head"]
ACTIVATIONS = ["relu1", "relu2"]


def _healthy_series():
    """What a healthy 10-class run records: every array the checks read, as plain numbers."""
    steps = np.arange(1, STEPS + 1)
    rng = np.random.default_rng(0)
    loss = math.log(10) * np.exp(-steps / 40) + 0.1 + 0.02 * rng.standard_normal(STEPS)
    health = np.full((len(STATISTICS), len(LAYERS), STEPS // 10), np.nan)
    s = {name: i for i, name in enumerate(STATISTICS)}
    for j, layer in enumerate(LAYERS):
        health[s["act_mean"], j] = 0.5
        health[s["act_std"], j] = 1.0
        health[s["act_zero"], j] = 0.4 if layer in ACTIVATIONS else 0.0
        if layer in ACTIVATIONS:
            health[s["dead_channels"], j] = 0.05
        else:
            health[s["grad_norm"], j] = 0.5 if layer != "head" else 1.0
            health[s["weight_norm"], j] = 10.0
            health[s["update_ratio"], j] = 1e-3
    labels = np.repeat(np.arange(10), 10)
    logits = np.zeros((5, 100, 10))
    logits[:, np.arange(100), labels] = 5.0  # confident and right
    return {
        "steps": steps,
        "loss": loss,
        "eval_steps": np.arange(20, STEPS + 1, 20),
        "eval_loss": np.linspace(1.5, 0.3, STEPS // 20),
        "accuracy": np.linspace(0.1, 0.9, 5),
        "baseline": 0.1,
        "labels": labels,
        "logits": logits,
        "health": health,
        "residual": np.full((1, STEPS // 10), 0.3),
        "class_names": [str(k) for k in range(10)],
    }


def _write_run(run_dir, series):
    with RunWriter(run_dir, name=run_dir.name) as writer:
        for step, value in zip(series["steps"], series["loss"], strict=True):
            writer.add_scalar(TAGS.LOSS, int(step), float(value))
        for step, value in zip(series["eval_steps"], series["eval_loss"], strict=True):
            writer.add_scalar(TAGS.EVAL_LOSS, int(step), float(value))
        snapshot_steps = np.linspace(0, STEPS, len(series["accuracy"])).astype(int)
        for step, accuracy, logits in zip(snapshot_steps, series["accuracy"], series["logits"], strict=True):
            writer.add_scalar(TAGS.ACCURACY, int(step), float(accuracy))
            writer.add_tensor(TAGS.PROBE_OUTPUT, int(step), logits.astype(np.float32))
        writer.add_tensor(TAGS.PROBE_LABELS, 0, series["labels"])
        writer.set_meta(TAGS.MAJORITY_BASELINE, series["baseline"])
        writer.set_meta(TAGS.CLASS_NAMES, series["class_names"])
        writer.set_meta(TAGS.HEALTH_LAYERS, LAYERS)
        writer.set_meta(TAGS.HEALTH_STATISTICS, list(STATISTICS))
        writer.set_meta(TAGS.HEALTH_ACTIVATION_LAYERS, ACTIVATIONS)
        writer.set_meta(TAGS.RESIDUAL_BLOCKS, ["block"])
        for t in range(series["health"].shape[-1]):
            writer.add_tensor(TAGS.HEALTH, 10 * (t + 1), series["health"][..., t].astype(np.float32))
            writer.add_tensor(TAGS.RESIDUAL, 10 * (t + 1), series["residual"][:, t].astype(np.float32))
    return run_dir


def _stat(series, name, layer):
    return series["health"][STATISTICS.index(name), LAYERS.index(layer)]


def _break_non_finite(s):
    s["loss"][120:] = np.nan


def _break_initial_loss(s):
    s["loss"][:5] = [25.0, 12.0, 6.0, 3.0, 2.0]


def _break_divergence(s):
    s["loss"][100:] = np.linspace(0.3, 7.0, STEPS - 100)


def _break_loss_spikes(s):
    s["loss"][[60, 90, 120, 150]] = 40.0


def _break_plateau(s):
    s["loss"][:] = math.log(10) + 0.01 * np.random.default_rng(1).standard_normal(STEPS)


def _break_overfitting(s):
    s["eval_loss"][:] = [1.0, 0.6, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9]


def _break_underfitting(s):
    s["accuracy"][:] = [0.1, 0.09, 0.08, 0.08, 0.08]


def _break_dead_units(s):
    _stat(s, "dead_channels", "relu2")[:] = 0.97


def _break_low_activation_energy(s):
    _stat(s, "act_std", "relu2")[:] = 0.001


def _break_vanishing_gradients(s):
    _stat(s, "grad_norm", "conv1")[:] = 1e-7


def _break_update_ratio(s):
    _stat(s, "update_ratio", "conv2")[:] = 1e-9


def _break_residual_idle(s):
    s["residual"][:] = 1e-4


def _break_class_imbalance(s):
    s["labels"][:80] = 0
    s["baseline"] = 0.81


def _break_label_noise(s):
    wrong = np.arange(0, 100, 5)  # 20 % of the probe set: the model is sure of the next class
    s["logits"][:, wrong] = 0.0
    s["logits"][:, wrong, (s["labels"][wrong] + 1) % 10] = 6.0


BREAKS = {name.removeprefix("_break_"): fn for name, fn in globals().items() if name.startswith("_break_")}
BREAKS["leakage"] = None  # needs datasets, not a broken run


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory):
    return _write_run(tmp_path_factory.mktemp("healthy") / "run", _healthy_series())


def test_a_healthy_run_raises_no_warning(healthy_run):
    train = np.arange(60, dtype=np.float32).reshape(20, 3)
    findings = doctor(healthy_run, datasets={"train": train, "validation": train + 100}, record=False)
    assert [f for f in findings if f.severity != "info"] == []


@pytest.mark.parametrize("check", CHECKS.names())
def test_every_check_fires_on_a_run_broken_its_way(tmp_path, check):
    assert check in BREAKS, f"add a _break_{check} builder to this test"
    series = _healthy_series()
    datasets = None
    if BREAKS[check] is None:
        train = np.arange(60, dtype=np.float32).reshape(20, 3)
        datasets = {"train": train, "validation": np.concatenate([train[:4], train[:6] + 100])}
    else:
        BREAKS[check](series)
    run = _write_run(tmp_path / "run", series)
    findings = doctor(run, datasets=datasets, record=False)
    fired = [f for f in findings if f.check == check]
    assert fired, f"{check} did not fire; found {[f.check for f in findings]}"
    finding = fired[0]
    assert finding.title and finding.actions and finding.evidence, "a finding cites its numbers and what to try"
    expected_category = {"class_imbalance": "info", "residual_idle": "info"}
    assert finding.severity == expected_category.get(check, finding.severity)
    if check not in expected_category:
        assert finding.severity in ("warning", "error")
    if check != "leakage":
        assert finding.plot is not None and finding.plot.series


def test_the_leakage_check_names_the_shared_samples(tmp_path, healthy_run):
    train = torch.arange(30.0).reshape(10, 3)
    validation = torch.utils.data.TensorDataset(torch.cat([train[[2, 7]], train[:3] + 50]), torch.zeros(5))
    files = []
    for i in range(3):
        path = tmp_path / f"img{i}.bin"
        path.write_bytes(bytes([i, 1, 2]))
        files.append(path)
    copy = tmp_path / "copy.bin"
    copy.write_bytes(files[1].read_bytes())
    findings = doctor(
        healthy_run, datasets={"train": train, "validation": validation}, checks=["leakage"], record=False
    )
    evidence = findings[0].evidence["pairs"]["train/validation"]
    assert evidence["shared"] == 2 and evidence["examples"] == [[2, 0], [7, 1]]
    on_disk = doctor(healthy_run, datasets={"a": files, "b": [copy]}, checks=["leakage"], record=False)
    assert on_disk[0].evidence["pairs"]["a/b"]["examples"] == [[1, 0]]


def test_findings_are_ranked_stored_and_replaced(tmp_path):
    series = _healthy_series()
    _break_vanishing_gradients(series)
    _break_overfitting(series)
    _break_non_finite(series)
    run = _write_run(tmp_path / "run", series)
    findings = doctor(run)
    assert [f.severity for f in findings] == sorted(
        (f.severity for f in findings), key=["error", "warning", "info"].index
    )
    assert findings[0].check == "non_finite"  # an error of the implementation comes first
    as_stored = [f.to_record() for f in findings]  # JSON values: NaN as None, tuples as lists
    assert [f.to_record() for f in stored_findings(run)] == as_stored
    assert [f.to_record() for f in doctor(run)] == as_stored
    assert [f.to_record() for f in stored_findings(run)] == as_stored  # replaced, no duplicates
    doctor(run, checks=["overfitting"], thresholds={"overfit_rise": 5.0})
    assert [f.check for f in stored_findings(run)] == [f.check for f in findings if f.check != "overfitting"]
    with RunReader(run) as reader:
        assert reader.meta()[TAGS.DOCTOR_CHECKS] == sorted(CHECKS.names())
        assert reader.info.status == "finished"  # diagnosing does not reopen the run


def test_thresholds_are_parameters(healthy_run):
    assert not [f for f in doctor(healthy_run, record=False) if f.check == "dead_units"]
    strict = doctor(healthy_run, thresholds=Thresholds(dead_share=0.01), record=False)
    assert [f.check for f in strict if f.check == "dead_units"] == ["dead_units"]
    with pytest.raises(UnknownNameError, match="dead_share"):
        doctor(healthy_run, thresholds={"dead_shares": 0.1})
    with pytest.raises(UnknownNameError, match="dead_units"):
        doctor(healthy_run, checks=["dead_unit"])


def test_a_run_being_recorded_is_read_but_not_written(tmp_path):
    with RunWriter(tmp_path / "live") as writer:
        for step in range(1, 40):
            writer.add_scalar(TAGS.LOSS, step, float("nan") if step > 30 else 2.0 / step)
        writer.flush()
        assert [f.check for f in doctor(tmp_path / "live", record=False)] == ["non_finite"]
        with pytest.raises(RunLockedError):
            doctor(tmp_path / "live")


def test_cli_prints_the_findings_and_fails_on_errors(tmp_path, healthy_run, capsys):
    assert main(["doctor", str(healthy_run), "--no-record"]) == 0
    assert "no findings" in capsys.readouterr().out
    broken = _healthy_series()
    _break_divergence(broken)
    run = _write_run(tmp_path / "broken", broken)
    assert main(["doctor", str(run)]) == 1
    out = capsys.readouterr().out
    assert "divergence" in out and "1 error" in out
    assert main(["doctor", str(run), "--threshold", "divergence_factor=100"]) == 0


def test_the_report_shows_the_findings_escaped(tmp_path):
    from deepscope.report import build_report

    series = _healthy_series()
    _break_class_imbalance(series)
    series["class_names"] = ["<script>alert(1)</script>", *series["class_names"][1:]]
    _break_dead_units(series)
    run = _write_run(tmp_path / "run", series)
    findings = doctor(run)
    html = build_report(run).read_text()
    assert "Diagnosis" in html and "dead units: relu2" in html
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    figures = sorted(p.name for p in (tmp_path / "run" / "figures").glob("finding_*.png"))
    assert len(figures) == sum(f.plot is not None for f in findings) == len(findings)


def test_a_finding_displays_its_plot_in_a_notebook(healthy_run):
    finding = doctor(healthy_run, thresholds={"dead_share": 0.01}, record=False)[0]
    assert isinstance(finding, Finding) and finding._repr_png_().startswith(b"\x89PNG")
