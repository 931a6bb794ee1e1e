"""Tests of the run store: round trips, downsampling, crash safety, concurrency and versioning."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from deepscope.errors import SchemaVersionError, UnknownNameError
from deepscope.store import (
    SCHEMA_VERSION,
    STORE_FILENAME,
    FindingRecord,
    RunReader,
    RunWriter,
    find_runs,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# ---------------------------------------------------------------------------------- round trips


def test_scalars_round_trip_many_tags_out_of_order(tmp_path):
    rng = np.random.default_rng(0)
    tags = [f"train/loss{i}" for i in range(5)] + ["repr/layer1.0", "weird tag/ü"]
    expected = {}
    with RunWriter(tmp_path, flush_rows=7) as writer:
        for k, tag in enumerate(tags):
            steps = rng.permutation(50)
            values = rng.normal(size=50)
            for step, value in zip(steps, values, strict=True):
                writer.add_scalar(tag, int(step), float(value), wall_time=1000.0 + step)
            expected[tag] = (steps, values, k)
        writer.add_scalars(3, {"a": 1.0, "b": np.float32(2.5)}, wall_time=5.0)
        writer.add_scalar("special", 0, math.nan)
        writer.add_scalar("special", 1, math.inf)
        writer.add_scalar("special", 2, -math.inf)

    with RunReader(tmp_path) as reader:
        assert reader.scalar_tags() == sorted([*tags, "a", "b", "special"])
        for tag, (steps, values, _) in expected.items():
            series = reader.scalars(tag)
            order = np.argsort(steps)
            assert series.tag == tag
            assert series.steps.dtype == np.int64 and series.values.dtype == np.float64
            np.testing.assert_array_equal(series.steps, steps[order])
            np.testing.assert_array_equal(series.values, values[order])
            np.testing.assert_array_equal(series.wall_times, 1000.0 + steps[order])
        assert reader.scalars("b").values.tolist() == [2.5]
        assert reader.scalars("a").wall_times.tolist() == [5.0]
        special = reader.scalars("special").values
        assert math.isnan(special[0]) and special[1] == math.inf and special[2] == -math.inf
        with pytest.raises(UnknownNameError, match="train/loss1") as err:
            reader.scalars("train/los1")
        assert isinstance(err.value, KeyError)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"])
def test_tensor_round_trip_inline_and_blob(tmp_path, dtype):
    rng = np.random.default_rng(1)
    arrays = {
        "scalar0d": np.array(rng.normal() * 10).astype(dtype),  # 0-d, inline
        "small": (rng.normal(size=(2, 3)) * 10).astype(dtype),  # inline
        "big": (rng.normal(size=(4, 5, 60)) * 10).astype(dtype),  # 1200 elements: always > 256 bytes -> blob
        "empty": np.zeros((0, 3), dtype=dtype),
        "fortran": np.asfortranarray((rng.normal(size=(3, 4)) * 10).astype(dtype)),
    }
    with RunWriter(tmp_path, inline_bytes=256) as writer:
        for tag, arr in arrays.items():
            writer.add_tensor(f"t/{tag}", 7, arr)
    with RunReader(tmp_path) as reader:
        for tag, arr in arrays.items():
            back = reader.tensor(f"t/{tag}", 7)
            assert back.dtype == arr.dtype and back.shape == arr.shape
            np.testing.assert_array_equal(back, arr)
            back.flat[:1] = 0  # returned arrays are writable copies
    with sqlite3.connect(tmp_path / STORE_FILENAME) as conn:
        rows = dict(conn.execute("SELECT tag, blob FROM tensors").fetchall())
    assert rows["t/big"] is not None and rows["t/small"] is None
    assert (tmp_path / rows["t/big"]).is_file()
    assert (tmp_path / rows["t/big"]).resolve().is_relative_to((tmp_path / "blobs" / "tensors").resolve())


def test_a_blob_tensor_can_be_read_as_a_read_only_memory_map(tmp_path):
    big = np.arange(3 * 40_000, dtype=np.float16).reshape(3, 40_000)  # 240 kB: a blob
    small = np.arange(6, dtype=np.int64)  # inline
    with RunWriter(tmp_path / "run") as w:
        w.add_tensor("big", 0, big)
        w.add_tensor("small", 0, small)
    with RunReader(tmp_path / "run") as r:
        mapped = r.tensor("big", 0, mmap=True)
        assert isinstance(mapped, np.memmap) and np.array_equal(mapped[1:2], big[1:2]) and mapped.dtype == big.dtype
        with pytest.raises(ValueError, match="read-only"):
            mapped[0, 0] = 1
        inline = r.tensor("small", 0, mmap=True)
        assert not isinstance(inline, np.memmap) and np.array_equal(inline, small)
        assert not isinstance(r.tensor("big", 0), np.memmap)


def test_tensors_are_copied_on_add_and_listed_in_step_order(tmp_path):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    big = np.ones(1000, dtype=np.float64)
    with RunWriter(tmp_path, inline_bytes=100, flush_seconds=60) as writer:
        for step in (5, 1, 3):
            writer.add_tensor("w", step, arr * step)
        writer.add_tensor("copied", 0, arr)
        writer.add_tensor("copied_big", 0, big)
        arr[:] = -1  # mutation after add must not leak into the store
        big[:] = -1
        writer.add_tensor("list", 0, [[1, 2], [3, 4]])
    with RunReader(tmp_path) as reader:
        steps, arrays = reader.tensors("w")
        assert steps.tolist() == [1, 3, 5] and steps.dtype == np.int64
        for step, got in zip(steps, arrays, strict=True):
            np.testing.assert_array_equal(got, np.arange(6, dtype=np.float32).reshape(2, 3) * step)
        np.testing.assert_array_equal(reader.tensor_steps("w"), [1, 3, 5])
        np.testing.assert_array_equal(reader.tensor("copied", 0), np.arange(6).reshape(2, 3))
        assert (reader.tensor("copied_big", 0) == 1).all()
        assert reader.tensor("list", 0).tolist() == [[1, 2], [3, 4]]
        assert reader.tensor_tags() == ["copied", "copied_big", "list", "w"]
        with pytest.raises(KeyError, match=r"no step 4; nearest stored steps: 1, 3, 5 \(3 steps from 1 to 5\)"):
            reader.tensor("w", 4)
        with pytest.raises(UnknownNameError, match="unknown tensor tag 'ww'"):
            reader.tensor_steps("ww")


def test_add_tensor_rejects_object_arrays(tmp_path):
    with RunWriter(tmp_path) as writer, pytest.raises(TypeError, match="dtype object"):
        writer.add_tensor("x", 0, np.array([{}, None], dtype=object))


def test_media_round_trip_bytes_and_path(tmp_path):
    run = tmp_path / "run"
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    source = tmp_path / "anim.gif"
    source.write_bytes(b"GIF89a-fake-animation")
    with RunWriter(run) as writer:
        rel_png = writer.add_media("../../escape/img", 3, "image", png)
        rel_gif = writer.add_media("dyn/anim", 9, "gif", source)
        rel_txt = writer.add_media("dyn/anim", 2, "text", b"hello")
        source.unlink()  # a path source is copied at once, so a temporary file may go away
    assert not rel_png.is_absolute() and rel_png.suffix == ".png" and rel_gif.suffix == ".gif"
    assert rel_txt.suffix == ".txt"
    with RunReader(run) as reader:
        assert reader.media_tags() == ["../../escape/img", "dyn/anim"]
        records = reader.media("dyn/anim")
        assert [(r.tag, r.step, r.kind) for r in records] == [("dyn/anim", 2, "text"), ("dyn/anim", 9, "gif")]
        assert records[1].path.is_absolute() and records[1].path.read_bytes() == b"GIF89a-fake-animation"
        assert records[0].path.read_bytes() == b"hello"
        (img,) = reader.media("../../escape/img")
        assert img.path.read_bytes() == png
        assert img.path == (run / rel_png).resolve()
        assert img.path.is_relative_to((run / "blobs" / "media").resolve())  # unsafe tags stay inside blobs/
        assert len(reader.media()) == 3
        with pytest.raises(UnknownNameError):
            reader.media("dyn/anima")


def test_meta_and_findings_round_trip(tmp_path):
    with RunWriter(tmp_path) as writer:
        writer.set_meta("classes", ["cat", "dog"])
        writer.set_meta("every", 1)
        writer.set_meta("every", 10)  # last value wins
        writer.add_finding(
            "dead_relu",
            "warning",
            "40% of layer1 units never fire",
            {"fraction": np.float32(0.4), "layer": "layer1", "per_step": np.arange(3)},
            step_start=100,
            step_end=200,
            actions=["lower the learning rate", "use LeakyReLU"],
        )
        writer.add_finding("nan_loss", "error", "loss became NaN", {})
        with pytest.raises(ValueError, match="schema_version"):
            writer.set_meta("schema_version", 2)
        with pytest.raises(TypeError, match="JSON-serialisable"):
            writer.set_meta("bad", object())
    with RunReader(tmp_path) as reader:
        meta = reader.meta()
        assert meta.pop("repro/environment")["python"]  # every new run records what it ran on
        assert meta == {"classes": ["cat", "dog"], "every": 10}
        first, second = reader.findings()
        assert first == FindingRecord(
            check="dead_relu",
            severity="warning",
            title="40% of layer1 units never fire",
            evidence={"fraction": pytest.approx(0.4), "layer": "layer1", "per_step": [0, 1, 2]},
            step_start=100,
            step_end=200,
            actions=["lower the learning rate", "use LeakyReLU"],
        )
        assert (second.check, second.step_start, second.step_end, second.actions) == ("nan_loss", None, None, [])


def test_run_info_status_finished_failed_and_resume(tmp_path):
    ok, bad = tmp_path / "ok", tmp_path / "bad"
    before = time.time()
    with RunWriter(ok, name="baseline", config={"lr": 0.1, "path": Path("/x")}, versions={"torch": "2.3"}) as w:
        w.add_scalar("loss", 0, 1.0)
        w.flush()
        with RunReader(ok) as reader:
            assert reader.info.status == "running"
    with RunReader(ok) as reader:
        info = reader.info
    assert (info.name, info.status, info.config) == ("baseline", "finished", {"lr": 0.1, "path": "/x"})
    assert info.versions["torch"] == "2.3" and "numpy" in info.versions and "python" in info.versions
    assert before <= info.created <= time.time() and len(info.run_id) == 32

    with pytest.raises(RuntimeError, match="boom"), RunWriter(bad) as w:
        w.add_scalar("loss", 0, 1.0)
        raise RuntimeError("boom")
    with RunReader(bad) as reader:
        assert reader.info.status == "failed" and reader.info.name == "bad"
        assert len(reader.scalars("loss")) == 1  # rows added before the exception are kept

    with RunWriter(ok) as w:  # resume: same run, rows appended
        w.add_scalar("loss", 1, 0.5)
    with RunReader(ok) as reader:
        assert reader.info.run_id == info.run_id and reader.info.created == info.created
        assert reader.info.config == info.config and reader.info.status == "finished"
        assert reader.info.name == "baseline"  # resuming without a name keeps the run's name
        assert reader.scalars("loss").values.tolist() == [1.0, 0.5]


def test_close_is_idempotent_and_closed_writer_refuses_rows(tmp_path):
    writer = RunWriter(tmp_path)
    writer.set_status("failed")
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.add_scalar("x", 0, 1.0)
    with RunReader(tmp_path) as reader:
        assert reader.info.status == "failed"  # an explicit status survives close()
    with pytest.raises(ValueError, match="status must be one of"), RunWriter(tmp_path) as w:
        w.set_status("done")


# ------------------------------------------------------------------------------ batching, errors


def test_batches_commit_by_rows_and_by_time_without_flush(tmp_path):
    by_rows, by_time = tmp_path / "rows", tmp_path / "time"
    with RunWriter(by_rows, flush_seconds=60, flush_rows=10) as writer, RunReader(by_rows) as reader:
        for i in range(9):
            writer.add_scalar("x", i, i)
        time.sleep(0.1)
        assert reader.scalar_tags() == []  # below flush_rows and flush_seconds: nothing committed yet
        writer.add_scalar("x", 9, 9)
        assert _wait_until(lambda: reader.scalar_tags() == ["x"])
        assert len(reader.scalars("x")) == 10
    with RunWriter(by_time, flush_seconds=0.05, flush_rows=10_000) as writer, RunReader(by_time) as reader:
        writer.add_scalar("y", 0, 1.0)
        assert _wait_until(lambda: reader.scalar_tags() == ["y"])


def test_writer_thread_errors_are_reraised_then_writing_continues(tmp_path):
    with RunWriter(tmp_path, inline_bytes=8) as writer:
        (tmp_path / "blobs" / "tensors").write_text("not a folder")  # the blob write will fail in the thread
        writer.add_tensor("big", 0, np.zeros(100))
        writer.add_scalar("lost_with_batch", 0, 1.0)
        with pytest.raises(NotADirectoryError, match="writer thread"):
            writer.flush()
        writer.flush()  # reported once; the writer keeps working
        writer.add_scalar("kept", 1, 2.0)
    with RunReader(tmp_path) as reader:
        assert reader.scalar_tags() == ["kept"] and reader.tensor_tags() == []
        assert reader.info.status == "finished"


# ---------------------------------------------------------------------------------- downsampling


def _reference_downsample(values: np.ndarray, max_points: int) -> list[int]:
    """Plain-Python statement of the documented rule, to check the vectorised one against."""
    n, n_buckets = len(values), (max_points - 2) // 2
    inner = list(range(1, n - 1))
    keep = {0, n - 1}
    for b in range(n_buckets):
        members = [i for k, i in enumerate(inner) if k * n_buckets // len(inner) == b]
        keep.add(min(members, key=lambda i: (values[i], i)))
        keep.add(max(members, key=lambda i: (values[i], i)))
    return sorted(keep)


@pytest.mark.parametrize(("n", "max_points"), [(5000, 100), (1001, 7), (50, 49), (10, 4)])
def test_downsampling_keeps_extremes_first_last_and_bound(tmp_path, n, max_points):
    rng = np.random.default_rng(n)
    values = rng.normal(size=n)
    values[n // 3] = 50.0  # isolated spikes must survive
    values[2 * n // 3] = -50.0
    steps = np.arange(n) * 2
    with RunWriter(tmp_path, flush_rows=100_000) as writer:
        for step, value in zip(steps, values, strict=True):
            writer.add_scalar("loss", int(step), float(value), wall_time=float(step))
    with RunReader(tmp_path) as reader:
        full = reader.scalars("loss")
        small = reader.scalars("loss", max_points=max_points)
        assert len(reader.scalars("loss", max_points=n)) == n  # no downsampling needed
    assert len(full) == n and len(small) <= max_points
    assert small.steps[0] == 0 and small.steps[-1] == steps[-1]
    assert small.values.max() == 50.0 and small.values.min() == -50.0
    assert np.all(np.diff(small.steps) > 0)
    kept = small.steps // 2
    np.testing.assert_array_equal(small.values, values[kept])
    np.testing.assert_array_equal(small.wall_times, steps[kept])
    assert kept.tolist() == _reference_downsample(values, max_points)


def test_downsampling_rejects_too_few_points(tmp_path):
    with RunWriter(tmp_path) as writer:
        writer.add_scalar("x", 0, 0.0)
    with RunReader(tmp_path) as reader, pytest.raises(ValueError, match=">= 4"):
        reader.scalars("x", max_points=3)


# ---------------------------------------------------------------------------- crash, concurrency

_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from deepscope.store import RunWriter

    writer = RunWriter(sys.argv[1], flush_seconds=0.05, flush_rows=150, inline_bytes=64)
    i = 0
    while True:
        writer.add_scalar("loss", i, float(i))
        if i % 50 == 0:
            writer.add_tensor("big", i, np.full(100, i, dtype=np.float32))  # 400 bytes: a .npy blob
        i += 1
        if i % 200 == 0:
            writer.flush()
            print(i, flush=True)
    """
)


def test_sigkill_loses_only_the_unflushed_batch_and_never_corrupts(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(run)], stdout=subprocess.PIPE, text=True, env=_child_env()
    )
    committed = []
    try:
        for line in proc.stdout:
            committed.append(int(line))
            if len(committed) >= 8:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    assert len(committed) >= 8, "the child writer stopped early"
    last = committed[-1]

    uri = f"{(run / STORE_FILENAME).resolve().as_uri()}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with RunReader(run) as reader:
        assert reader.info.status == "interrupted"  # killed: never marked finished, and its lock is gone
        series = reader.scalars("loss")
        assert len(series) >= last
        np.testing.assert_array_equal(series.steps, np.arange(len(series)))  # a prefix, no holes
        np.testing.assert_array_equal(series.values, series.steps)
        steps, arrays = reader.tensors("big")
        assert set(range(0, last, 50)) <= set(steps.tolist())
        for step, arr in zip(steps, arrays, strict=True):
            assert arr.shape == (100,) and (arr == step).all()
    with RunWriter(run) as writer:  # the crashed store can be resumed
        writer.add_scalar("loss", 10**6, 0.0)
    with RunReader(run) as reader:
        assert reader.info.status == "finished" and reader.scalars("loss").steps[-1] == 10**6


def test_reader_works_while_writer_writes(tmp_path):
    total = 3000
    writer = RunWriter(tmp_path, flush_seconds=0.02, flush_rows=100)

    def produce() -> None:
        for i in range(total):
            writer.add_scalar("x", i, float(i))
            if i % 250 == 0:
                writer.flush()
                time.sleep(0.01)
        writer.close()

    counts = []
    with RunReader(tmp_path) as reader:
        thread = threading.Thread(target=produce)
        thread.start()
        while thread.is_alive():
            counts.append(len(reader.scalars("x")) if "x" in reader.scalar_tags() else 0)
        thread.join()
        counts.append(len(reader.scalars("x")))
        assert reader.info.status == "finished"
    assert counts == sorted(counts), "a reader saw rows disappear"
    assert counts[-1] == total
    assert len(set(counts)) >= 3, f"reads did not interleave with writes: {sorted(set(counts))}"


def test_reader_creates_no_files_beyond_wal(tmp_path):
    with RunWriter(tmp_path) as writer:
        writer.add_scalar("x", 0, 1.0)
    before = set(os.listdir(tmp_path))
    with RunReader(tmp_path) as reader:
        reader.scalars("x")
        reader.info  # noqa: B018
    assert set(os.listdir(tmp_path)) - before <= {f"{STORE_FILENAME}-wal", f"{STORE_FILENAME}-shm"}
    assert set(os.listdir(tmp_path / "blobs")) <= {"tensors", "media"}


# ----------------------------------------------------------------------------- opening, versions


def test_unknown_schema_version_is_refused(tmp_path):
    with RunWriter(tmp_path) as writer:
        writer.add_scalar("x", 0, 1.0)
    with sqlite3.connect(tmp_path / STORE_FILENAME) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    for opener in (RunReader, RunWriter):
        with pytest.raises(SchemaVersionError) as err:
            opener(tmp_path)
        message = str(err.value)
        assert "schema version 99" in message and f"reads version {SCHEMA_VERSION}" in message
        assert "upgrade deepscope" in message and isinstance(err.value, ValueError)


def test_missing_store_and_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / STORE_FILENAME)):
        RunReader(tmp_path)
    (tmp_path / STORE_FILENAME).write_bytes(b"this is not sqlite" * 100)
    for opener in (RunReader, RunWriter):
        with pytest.raises(SchemaVersionError, match="not a deepscope run store"):
            opener(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    with sqlite3.connect(other / STORE_FILENAME) as conn:  # an SQLite file of some other program
        conn.execute("CREATE TABLE things (x)")
    for opener in (RunReader, RunWriter):
        with pytest.raises(SchemaVersionError, match="not a deepscope run store"):
            opener(other)


def test_reading_a_finished_run_adds_no_files_next_to_it(tmp_path):
    def journal() -> str:
        with contextlib.closing(sqlite3.connect(tmp_path / STORE_FILENAME)) as conn:
            return conn.execute("PRAGMA journal_mode").fetchone()[0]

    def side_files() -> list[str]:
        return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f"{STORE_FILENAME}-"))

    with RunWriter(tmp_path) as writer:
        writer.add_scalar("loss", 0, 1.5)
    assert journal() == "delete"
    with RunReader(tmp_path) as reader:
        assert reader.scalars("loss").values.tolist() == [1.5]
    assert side_files() == []

    writer = RunWriter(tmp_path)  # resumed: WAL again, so a reader can follow it live
    writer.add_scalar("loss", 1, 1.0)
    writer.flush()
    reader = RunReader(tmp_path)
    assert reader.scalars("loss").values.tolist() == [1.5, 1.0]
    started = time.monotonic()
    writer.close()  # a reader holds the store: it stays in WAL mode, and the writer does not wait for the reader
    assert time.monotonic() - started < 5
    assert reader.scalars("loss").values.tolist() == [1.5, 1.0]
    reader.close()
    assert journal() == "wal"
    with RunWriter(tmp_path):
        pass
    assert (journal(), side_files()) == ("delete", [])


def test_reader_falls_back_to_immutable_in_a_read_only_folder(tmp_path, monkeypatch):
    """A read-only WAL open needs a ``-shm`` file it cannot create there; tests run as root, so simulate it."""
    with RunWriter(tmp_path, name="ro") as writer:
        writer.add_scalar("loss", 0, 1.5)
    real_connect, opened = sqlite3.connect, []

    class ReadOnlyFolder(sqlite3.Connection):
        def execute(self, *args, **kwargs):
            raise sqlite3.OperationalError("attempt to write a readonly database")

    def connect(database, *args, **kwargs):
        opened.append(str(database))
        if "immutable=1" not in str(database):
            kwargs["factory"] = ReadOnlyFolder
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    with RunReader(tmp_path) as reader:
        assert reader.info.name == "ro"
        assert reader.scalars("loss").values.tolist() == [1.5]
    assert [uri.rpartition("?")[2] for uri in opened] == ["mode=ro", "mode=ro&immutable=1"]

    (tmp_path / f"{STORE_FILENAME}-wal").touch()  # a live writer may still change the file: no fallback
    opened.clear()
    with pytest.raises(SchemaVersionError, match="readonly"):
        RunReader(tmp_path)
    assert [uri.rpartition("?")[2] for uri in opened] == ["mode=ro"]


def test_find_runs(tmp_path):
    run_dirs = [tmp_path / "b", tmp_path / "a" / "x", tmp_path / "a" / "y" / "z"]
    for run_dir in run_dirs:
        RunWriter(run_dir).close()
    RunWriter(tmp_path / "d1" / "d2" / "d3" / "too_deep").close()
    (tmp_path / "empty").mkdir()
    assert find_runs(tmp_path) == sorted(run_dirs)
    assert find_runs(tmp_path / "b") == [tmp_path / "b"]
    assert find_runs(tmp_path / "b" / STORE_FILENAME) == [tmp_path / "b"]
    with pytest.raises(FileNotFoundError, match="no deepscope run"):
        find_runs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_runs(tmp_path / "missing")


def test_store_does_not_import_torch():
    code = "import sys, deepscope.store; assert 'torch' not in sys.modules, sorted(sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env=_child_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_stored_json_columns_are_plain_json(tmp_path):
    """Other tools (and later schema versions) read the file directly: columns hold plain JSON."""
    with RunWriter(tmp_path, config={"lr": 0.1}) as writer:
        writer.add_tensor("t", 0, np.zeros((2, 3), dtype=np.float32))
    with sqlite3.connect(tmp_path / STORE_FILENAME) as conn:
        (schema,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        (config,) = conn.execute("SELECT config FROM runs").fetchone()
        dtype, shape = conn.execute("SELECT dtype, shape FROM tensors").fetchone()
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    assert json.loads(schema) == SCHEMA_VERSION and json.loads(config) == {"lr": 0.1}
    assert np.dtype(dtype) == np.float32 and json.loads(shape) == [2, 3]
    assert mode == "delete"  # a finished run is a plain rollback-journal file: no -wal/-shm files to carry along


def test_delete_run_removes_the_store_and_blobs_only(tmp_path):
    from deepscope.store import delete_run

    run = tmp_path / "run"
    with RunWriter(run, inline_bytes=16) as writer:
        writer.add_tensor("big", 0, np.zeros(100))
    (run / "notes.txt").write_text("mine")
    assert delete_run(run) is True
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert delete_run(run) is False


@pytest.mark.parametrize(("ending", "status"), [("pass", "finished"), ("raise ValueError('boom')", "failed")])
def test_a_writer_left_open_is_closed_at_exit_with_the_right_status(tmp_path, ending, status):
    code = f"from deepscope.store import RunWriter\nw = RunWriter({str(tmp_path)!r})\nw.add_scalar('x', 1, 2.0)\n"
    code += ending
    subprocess.run([sys.executable, "-c", code], env=_child_env(), capture_output=True, timeout=60)
    with RunReader(tmp_path) as reader:
        assert reader.info.status == status
        assert reader.scalars("x").values.tolist() == [2.0]


def test_a_status_set_in_the_block_and_the_versions_survive_reopening(tmp_path):
    with RunWriter(tmp_path, versions={"torch": "9.9"}) as writer:
        writer.set_status("failed")
    with RunWriter(tmp_path) as writer:  # reopened without versions
        writer.set_status("failed")
    with RunReader(tmp_path) as reader:
        assert reader.info.status == "failed" and reader.info.versions["torch"] == "9.9"


def test_downsampling_keeps_each_buckets_first_minimum_and_last_maximum_nan_counting_as_largest():
    from deepscope.store import _downsample_index

    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(10, 400))
        max_points = int(rng.integers(4, n))
        values = rng.integers(0, 4, n).astype(float)  # many ties
        values[rng.random(n) < (0.3 if trial % 2 else 0.0)] = np.nan
        values[rng.random(n) < 0.05] = np.inf
        buckets = (max_points - 2) // 2
        expected = {0, n - 1}
        for b in range(buckets):
            rows = [i for i in range(n - 2) if i * buckets // (n - 2) == b]
            key = [np.inf if np.isnan(values[i + 1]) else values[i + 1] for i in rows]  # NaN above +inf...
            rank = [(k, np.isnan(values[i + 1])) for k, i in zip(key, rows, strict=True)]  # ...and above inf itself
            expected.add(rows[rank.index(min(rank))] + 1)
            expected.add(rows[len(rank) - 1 - rank[::-1].index(max(rank))] + 1)
        assert _downsample_index(values, max_points).tolist() == sorted(expected), trial
