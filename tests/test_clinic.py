"""The doctor on the clinic: each broken training is found by its check, no healthy one gets a warning."""

import pytest

from deepscope.demos.clinic import CASES, record_case
from deepscope.diagnostics import CHECKS, doctor


@pytest.fixture(scope="module")
def diagnosed(tmp_path_factory):
    out = tmp_path_factory.mktemp("clinic")
    results = {}
    for case in CASES:
        run, datasets = record_case(case.name, out)
        results[case.name] = doctor(run, datasets=datasets or None)
    return results


def test_the_clinic_has_enough_cases():
    broken = {c.expected for c in CASES if c.expected is not None}
    assert len(broken) >= 8 and sum(c.expected is None for c in CASES) >= 3
    assert broken <= set(CHECKS.names())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_each_case_is_diagnosed_as_intended(diagnosed, case):
    serious = {f.check: f.severity for f in diagnosed[case.name] if f.severity != "info"}
    if case.expected is None:
        assert serious == {}, f"a healthy run got {serious}"
    else:
        assert case.expected in serious, f"{case.name}: {case.expected} did not fire; got {serious}"


def test_unknown_cases_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="cases: healthy CNN"):
        record_case("healthy RNN", tmp_path)


def test_cleanlab_agrees_with_the_suspicious_labels(diagnosed):
    pytest.importorskip("cleanlab")  # a test extra: under CI=true a skip fails the run
    finding = next(f for f in diagnosed["label noise"] if f.check == "label_noise")
    assert finding.evidence["confirmed_by_cleanlab"] >= 0.8
    assert finding.evidence["share"] > 0.05 and len(finding.evidence["examples"]) == 20


def test_the_cleanlab_cross_check_starts_no_process(monkeypatch):
    """Not even on an 8-core machine, where cleanlab would fork a pool of the training process by default."""
    pytest.importorskip("cleanlab")
    import multiprocessing

    import numpy as np
    import psutil

    from deepscope._checks_data import _cleanlab_overlap

    def no_pool(*_args, **_kwargs):
        raise AssertionError("a process pool was started")

    monkeypatch.setattr(multiprocessing, "Pool", no_pool)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 8)
    labels = np.repeat(np.arange(4), 50)
    probabilities = np.eye(4)[labels] * 0.9 + 0.025
    probabilities[:10] = np.roll(probabilities[:10], 1, axis=1)  # ten confidently mislabelled samples
    suspicious = np.zeros(len(labels), bool)
    suspicious[:5] = True
    assert _cleanlab_overlap(probabilities, labels, suspicious) == 1.0
