"""The ``deepscope`` command line: thin commands over the library, heavy imports inside each command.

A user error prints one line (``error: ...``) and exits with status 2; ``--debug`` shows the
traceback. Output is plain when stdout is not a terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from deepscope import __version__
from deepscope._format import cell

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor, nn

    from deepscope.attribution import AttributionMap

__all__ = ["app", "main"]

app = typer.Typer(
    name="deepscope",
    help="See inside PyTorch neural networks: record, explain, inspect and report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
_state = {"debug": False}


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"deepscope {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


@app.command()
def demo(
    name: Annotated[str, typer.Argument(help="Demo to run (toy2d, ...); default: the tour of every demo.")] = "tour",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the runs, figures and report.")] = Path(
        "runs/demo"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="A much shorter run, for smoke tests.")] = False,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a demo setting, e.g. --set optimizer=sgd --set lr=0.1 (repeatable)."),
    ] = None,
) -> None:
    """Run a built-in demo on data generated offline and write its HTML report."""
    from deepscope.demos import run_demo

    start = time.perf_counter()
    result = run_demo(name, out, quick=quick, overrides=_parse_settings(settings or []))
    console = _console()
    console.print(f"demo {name!r} finished in {time.perf_counter() - start:.1f} s")
    console.print(f"report: {result.report.resolve()}")
    console.print(f"dashboard: deepscope serve {result.out_dir}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder, or a folder of runs shown side by side.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="HTML file to write.")] = None,
    projection: Annotated[
        str, typer.Option("--projection", help="How wide layer snapshots are drawn in 2-D: pca or umap.")
    ] = "pca",
) -> None:
    """Write a self-contained HTML report of recorded runs."""
    from deepscope.report import build_report

    path = build_report(run_dir, output, projection=projection)  # type: ignore[arg-type]
    _console().print(f"report: {path.resolve()}")


@app.command()
def serve(
    runs_root: Annotated[Path, typer.Argument(help="A run folder, or a folder of runs (up to 3 levels down).")] = Path(
        "runs"
    ),
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but loopback needs --token.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 6007,
    token: Annotated[
        str | None, typer.Option("--token", help="Secret every /api request must carry (?token= or a Bearer header).")
    ] = None,
) -> None:
    """Serve the local dashboard of recorded runs (read-only)."""
    import uvicorn

    from deepscope.server import check_bind, create_app, is_loopback

    check_bind(host, token)
    app_ = create_app(runs_root, token=token)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/" + (f"?token={token}" if token else "")
    if not is_loopback(host):
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        err.print(f"WARNING: serving {runs_root} on {host}, reachable from other machines; keep the token secret.")
    _console().print(f"deepscope dashboard: {url} (Ctrl+C to stop)")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command()
def inspect(
    model: _ModelArg,
    images: _ImagesArg,
    layer: Annotated[list[str], typer.Option("--layer", "-l", help="A spatial layer to inspect (repeatable).")],
    channels: Annotated[
        str | None, typer.Option(help="Channels whose top-k are shown, e.g. 0,3,7 (default: the first 8).")
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Images per channel (at most the number of images).")] = 9,
    weights: _WeightsOpt = None,
    trust_checkpoint: _TrustOpt = False,
    size: _SizeOpt = 224,
    no_normalize: _RawOpt = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the run and its report.")] = Path("runs/inspect"),
) -> None:
    """What layers respond to over image files: filters, top-k patches with DeconvNet projections, statistics."""
    from deepscope.inspection import inspect_layers
    from deepscope.report import build_report

    net, batch, _ = _prepare(model, images, weights, trust_checkpoint, size, no_normalize)
    chosen = [int(c) for c in channels.split(",")] if channels else None
    result = inspect_layers(net, batch, layer, channels=chosen, k=k, description=f"{len(images)} image files")
    run = result.record(out / "layers", name=f"{model}: layers", overwrite=True)
    console = _console()
    for row in result.stats.table():
        console.print("  ".join(f"{key}={cell(value)}" for key, value in row.items()))
    console.print(f"run: {run.resolve()}\nreport: {build_report(out).resolve()}")


@app.command()
def featurevis(
    model: _ModelArg,
    layer: Annotated[
        str | None, typer.Option("--layer", "-l", help="Layer whose channels are visualised (see `deepscope layers`).")
    ] = None,
    channels: Annotated[str | None, typer.Option(help="Channels, e.g. 0,3,7 (default: the first 8).")] = None,
    classes: Annotated[
        str | None, typer.Option(help="Class logits to visualise instead of a layer's channels, e.g. 0,281.")
    ] = None,
    unit: Annotated[
        str, typer.Option(help="channel: a channel's mean over positions; neuron: its centre position.")
    ] = "channel",
    steps: Annotated[int, typer.Option(help="Adam steps per image.")] = 512,
    size: Annotated[int, typer.Option(help="Image side in pixels, before the robustness transforms.")] = 128,
    lr: Annotated[float, typer.Option(help="Adam's learning rate.")] = 0.05,
    param: Annotated[str, typer.Option(help="fourier (1/f spectrum, decorrelated colour) or pixels.")] = "fourier",
    transforms: Annotated[
        str, typer.Option(help="standard (Lucid's pad, jitter, scale and rotate) or none.")
    ] = "standard",
    color_from: Annotated[
        list[Path] | None,
        typer.Option(
            "--color-from",
            help="Image files whose colour statistics decorrelate the Fourier colours (repeatable; default: "
            "scikit-image's photographs).",
        ),
    ] = None,
    per_batch: Annotated[int, typer.Option(help="Images optimised together.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the generator behind every random choice.")] = 0,
    weights: _WeightsOpt = None,
    trust_checkpoint: _TrustOpt = False,
    no_normalize: _RawOpt = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the run, figure and report.")] = Path(
        "runs/featurevis"
    ),
) -> None:
    """The image each channel (or class) of a model responds to most: an atlas, recorded in a run and reported."""
    import torch

    from deepscope.featurevis import feature_vis_grid, record_feature_vis
    from deepscope.featurevis.objectives import OUTPUT
    from deepscope.report import build_report

    if (layer is None) == (classes is None):
        both = ", not both" if layer is not None else ""
        raise typer.BadParameter(f"give --layer (to see its channels) or --classes (to see class logits){both}")
    net = _load_cli_model(model, weights, trust_checkpoint, size=size, resized=transforms != "none")
    if classes is not None:
        target, units = OUTPUT, _indices(classes, "--classes")
    else:
        target, units = layer, _indices(channels, "--channels") if channels is not None else list(range(8))
    result = feature_vis_grid(
        net, target, units,
        unit=unit, per_batch=per_batch, size=size, steps=steps, lr=lr, param=param, transforms=transforms,
        generator=torch.Generator().manual_seed(seed), preprocess=None if no_normalize else _imagenet_normalise(net),
        color=_color_matrix(color_from, size) if color_from else None,
    )  # fmt: skip
    title = f"{model}: {result.objective}"
    run = record_feature_vis(
        out / "featurevis", {title: result}, name=f"{model}: feature visualisation", overwrite=True,
        description=f"{steps} steps of Adam on {size} px {param} images ({transforms} transforms, seed {seed}).",
    )  # fmt: skip
    figure = result.save(out / "featurevis.png", title=title)
    console = _console()
    for label, curve in zip(result.labels, result.curve.T.tolist(), strict=True):
        console.print(f"{label}: objective {curve[0]:.4g} -> {curve[-1]:.4g}")
    console.print(f"figure: {figure.resolve()}\nrun: {run.resolve()}\nreport: {build_report(out).resolve()}")


def _indices(text: str, option: str) -> list[int]:
    """``"0,3,7"`` as integers."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):
        raise typer.BadParameter(f"{option} expects indices separated by commas, like 0,3,7; got {text!r}")
    return [int(part) for part in parts]


def _imagenet_normalise(net: nn.Module) -> Callable[[Tensor], Tensor]:
    """ImageNet normalisation on the model's device, applied to the [0, 1] images before the model."""
    import torch

    from deepscope._images import IMAGENET_MEAN, IMAGENET_STD
    from deepscope.layers import model_device

    device = model_device(net)
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return lambda x: (x - mean) / std


def _color_matrix(paths: list[Path], size: int) -> Tensor:
    """The colour correlation of the image files, for the Fourier parameterisation."""
    from deepscope._images import load_images
    from deepscope.featurevis.param import color_correlation

    return color_correlation(load_images(paths, size=size, mean=(0, 0, 0), std=(1, 1, 1))[0])


@app.command()
def evaluate(
    model: _ModelArg,
    data: Annotated[
        Path, typer.Option("--data", "-d", help="A CSV with path,label columns (+ metadata), or a folder per class.")
    ],
    groups: Annotated[
        str | None, typer.Option(help="A CSV column whose values are groups (site, sex, scanner…).")
    ] = None,
    class_names: Annotated[
        str | None, typer.Option(help="Comma-separated class names in output order (default: from the data).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    weights: _WeightsOpt = None,
    trust_checkpoint: _TrustOpt = False,
    size: _SizeOpt = 224,
    no_normalize: _RawOpt = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the run and its report.")] = Path(
        "runs/evaluate"
    ),
) -> None:
    """Evaluate a classifier on labelled images: per-class metrics with intervals, errors, calibration, groups."""
    from deepscope._images import LabelledImages, read_labelled
    from deepscope.evaluation import evaluate as run_evaluation
    from deepscope.report import build_report

    paths, texts, columns = read_labelled(data)
    if groups is not None and groups not in columns:
        raise typer.BadParameter(f"no column {groups!r} in {data}; columns: {', '.join(columns) or 'none'}")
    names = class_names.split(",") if class_names else None
    labels, names = _label_indices(texts, names)
    net = _load_cli_model(model, weights, trust_checkpoint, size=size)
    images = LabelledImages(paths, labels, size=size, raw=no_normalize)
    result = run_evaluation(
        net, images, names, groups=columns[groups] if groups else None, batch_size=batch_size,
        description=f"{len(paths)} images from {data}",
    )  # fmt: skip
    run = result.record(out / "evaluation", name=f"{model}: evaluation", overwrite=True)
    console = _console()
    console.print("  ".join(f"{key}={cell(value)}" for key, value in result.summary().items()))
    for row in result.table():
        console.print(
            "  ".join(f"{key}={cell(value)}" for key, value in row.items() if not key.endswith(("_low", "_high")))
        )
    console.print(f"run: {run.resolve()}\nreport: {build_report(out).resolve()}")


def _label_indices(texts: list[str], names: list[str] | None) -> tuple[list[int], list[str] | None]:
    """Integer labels as given; named labels as positions in ``names`` (default: the sorted distinct names)."""
    if all(t.strip().lstrip("-").isdigit() for t in texts):
        return [int(t) for t in texts], names
    known = names or sorted(set(texts))
    unknown = sorted(set(texts) - set(known))
    if unknown:
        raise typer.BadParameter(f"labels {unknown[:5]} are not among the class names {known[:10]}")
    index = {name: i for i, name in enumerate(known)}
    return [index[t] for t in texts], known


@app.command("explain-dataset")
def explain_dataset(
    model: _ModelArg,
    data: Annotated[
        Path, typer.Option("--data", "-d", help="A CSV with path,label columns (+ metadata), or a folder per class.")
    ],
    method: Annotated[str, typer.Option("--method", "-m", help="Attribution method (see the README).")] = "gradcam",
    target: Annotated[
        str, typer.Option(help="Class to explain: predicted, label (each image's own) or a class index.")
    ] = "predicted",
    class_names: Annotated[
        str | None, typer.Option(help="Comma-separated class names in output order (default: from the data).")
    ] = None,
    layer: _LayerOpt = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Method parameter KEY=VALUE, e.g. -p n_steps=64.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per attribution call.")] = 64,
    shard_size: Annotated[int, typer.Option(help="Images per shard: one file, one unit of work and retry.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of every shard's generator, for stochastic methods.")] = 0,
    dtype: Annotated[str, typer.Option(help="Stored maps: float32, or float16 (half the size).")] = "float32",
    backend: Annotated[str, typer.Option(help="Where the shards run: local (here) or ray.")] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (auto, ray://host:10001); default: RAY_ADDRESS, else new.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Ray workers (default: as the cluster's CPUs allow).")] = None,
    cpus_per_worker: Annotated[float, typer.Option(help="CPUs of each Ray worker.")] = 1.0,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs of each Ray worker (1: one GPU each).")] = 0.0,
    weights: _WeightsOpt = None,
    trust_checkpoint: _TrustOpt = False,
    size: _SizeOpt = 224,
    no_normalize: _RawOpt = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the maps, the run and its report.")] = Path(
        "runs/explain-dataset"
    ),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the maps, run and report in --out.")] = False,
) -> None:
    """Explain every image of a labelled dataset into compressed map shards, here or on Ray; exit 1 if shards fail."""
    from deepscope._images import LabelledImages, read_labelled
    from deepscope.report import build_report
    from deepscope.scale import Ray
    from deepscope.scale import explain_dataset as explain_all

    if out.exists() and any(out.iterdir()) and not overwrite:
        raise typer.BadParameter(f"{out} is not empty: pass --overwrite to replace its maps, run and report")
    explained = _dataset_target(target)
    paths, texts, _ = read_labelled(data)
    labels, names = _label_indices(texts, class_names.split(",") if class_names else None)
    net = _load_cli_model(model, weights, trust_checkpoint, size=size)
    images = LabelledImages([p.resolve() for p in paths], labels, size=size, raw=no_normalize)  # workers read them
    spec = str(Path(model).resolve()) if Path(model).is_file() else model
    on_ray = backend == "ray"
    start = time.perf_counter()
    try:
        result = explain_all(
            net, images, method, out=out / "maps", target=explained, layer=layer,
            batch_size=batch_size, shard_size=shard_size, seed=seed, dtype=dtype,
            backend=Ray(address, workers, cpus_per_worker, gpus_per_worker) if on_ray else backend,
            model_factory=partial(_architecture, spec, str(Path.cwd()), trust_checkpoint) if on_ray else None,
            overwrite=overwrite,
            **_parse_params(param or []),
        )  # fmt: skip
    except (FileExistsError, ImportError) as error:  # a folder it did not write; Ray not installed
        raise typer.BadParameter(str(error)) from error
    seconds = time.perf_counter() - start
    run = result.record(out / "explanations", data=images, class_names=names, name="explanations", overwrite=True)
    covered = int(result.coverage.covered().sum())
    console = _console()
    console.print(
        f"items={result.items} shards={result.coverage.shards} backend={result.coverage.backend} "
        f"seconds={seconds:.1f} items/s={covered / seconds:.1f} bytes={sum(s.bytes for s in result.shards):,}"
    )
    console.print(f"coverage: {result.coverage.summary()}", markup=False)
    console.print(f"maps: {result.path.resolve()}\nrun: {run.resolve()}\nreport: {build_report(out).resolve()}")
    if not result.coverage.complete:
        raise typer.Exit(code=1)


def _dataset_target(text: str) -> int | str | None:
    """``--target`` of explain-dataset: None for predicted, ``"label"``, or a class index."""
    if text in ("predicted", "label"):
        return None if text == "predicted" else text
    if not text.strip().isdigit():
        raise typer.BadParameter(f"--target {text!r}: use predicted, label or a class index")
    return int(text)


def _architecture(spec: str, cwd: str, trust: bool) -> nn.Module:
    """The model ``spec`` names, without weights: the factory each Ray worker calls (explain_dataset sends them)."""
    from deepscope._loading import load_model

    if cwd not in sys.path:  # module:factory from the command's working directory, as in _load_cli_model
        sys.path.insert(0, cwd)
    return load_model(spec, trust_checkpoint=trust)


@app.command()
def doctor(
    run_dir: Annotated[Path, typer.Argument(help="A run folder, or a folder of runs.")],
    record: Annotated[
        bool, typer.Option("--record/--no-record", help="Store the findings in each run (the report shows them).")
    ] = True,
    threshold: Annotated[
        list[str] | None,
        typer.Option("--threshold", help="Change a threshold, e.g. --threshold dead_share=0.3 (repeatable)."),
    ] = None,
    check: Annotated[
        list[str] | None, typer.Option("--check", help="Run only this check (repeatable); default: all.")
    ] = None,
) -> None:
    """Diagnose recorded runs: ranked findings with their evidence; exit status 1 if one is an error."""
    from deepscope.diagnostics import doctor as diagnose
    from deepscope.store import find_runs

    limits = {key: float(value) for key, value in _parse_settings(threshold or []).items()}
    console = _console()
    counts = {"error": 0, "warning": 0, "info": 0}
    for run in find_runs(run_dir):
        findings = diagnose(run, thresholds=limits, checks=check or None, record=record)
        console.print(f"run {run}: {len(findings) or 'no'} finding{'s' if len(findings) != 1 else ''}")
        if findings:
            _print_findings(findings)
        for finding in findings:
            counts[finding.severity] += 1
    console.print(", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in counts.items()))
    if counts["error"]:
        raise typer.Exit(code=1)


@app.command()
def env(
    as_json: Annotated[bool, typer.Option("--json", help="Print the environment as JSON.")] = False,
) -> None:
    """What this machine runs: Python, libraries, CUDA/cuDNN, devices, CPU, OS, git commit (what every run records)."""
    import json

    from deepscope.repro import environment

    found = environment()
    if as_json:
        print(json.dumps(found, indent=2, sort_keys=True))
        return
    console = _console()
    for key, value in _flatten(found):
        console.print(f"{key}: {value}", markup=False, highlight=False)


def _flatten(value: object, prefix: str = "") -> list[tuple[str, object]]:
    """``a.b: value`` rows of a nested dict, for printing."""
    if isinstance(value, dict) and value:
        return [row for key, inner in value.items() for row in _flatten(inner, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), value)]


@app.command("verify-split")
def verify_split(
    run_dir: Annotated[Path, typer.Argument(help="A run holding a split manifest (repro.split_manifest(...).record).")],
    base: Annotated[
        Path | None, typer.Option(help="Folder the manifest's relative paths start from (default: the current one).")
    ] = None,
) -> None:
    """Re-read the files of a run's data splits and compare them with its manifest; exit 1 when they differ."""
    from deepscope.repro import SplitManifest, verify_files

    check = verify_files(SplitManifest.load(run_dir), base)
    _console().print(check.summary(), markup=False, highlight=False)
    differs = check.missing or check.new or any(d.found is not None and not d.identical for d in check.splits)
    if differs:
        raise typer.Exit(code=1)


@app.command("export-tensorboard")
def export_tensorboard(
    run_dir: Annotated[Path, typer.Argument(help="A run folder, or a folder of runs.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for the TensorBoard event files.")],
) -> None:
    """Write recorded runs as TensorBoard logs: scalars, layer health, histograms and images."""
    from deepscope.export import export_tensorboard as export

    folders = export(run_dir, out_dir)
    console = _console()
    for folder in folders:
        console.print(f"tensorboard log: {folder.resolve()}")
    console.print(f"view with: tensorboard --logdir {out_dir} --host 127.0.0.1")


@app.command()
def layers(
    model: _ModelArg,
    weights: _WeightsOpt = None,
    trust_checkpoint: _TrustOpt = False,
    input_shape: Annotated[
        str | None,
        typer.Option(help="Example input shape for output shapes, e.g. 1,3,224,224 (default for torchvision models)."),
    ] = None,
    leaves: Annotated[bool, typer.Option("--leaves", help="Only leaf modules.")] = False,
) -> None:
    """List a model's layers: dotted name, type, parameters and output shape."""
    import torch

    from deepscope.layers import list_layers

    net = _load_cli_model(model, weights, trust_checkpoint)
    shape = _parse_shape(input_shape) if input_shape else (1, 3, 224, 224) if model.startswith("torchvision:") else None
    example = torch.zeros(shape) if shape else None
    try:
        infos = list_layers(net, example, leaves_only=leaves)
    except RuntimeError as error:  # the model's own forward rejected the example input
        first = str(error).strip().splitlines()[0]
        raise typer.BadParameter(
            f"the model failed on an input of shape {'×'.join(map(str, shape or ()))}: {first}. "
            "Pass an --input-shape the model accepts."
        ) from error
    _print_layers(infos, with_shapes=example is not None)
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    _console().print(f"total parameters: {total:,} (trainable {trainable:,})")


_ModelArg = Annotated[
    str,
    typer.Argument(
        help="torchvision:NAME, a torch.export archive (.pt2, needs --trust-checkpoint), a TorchScript file, or "
        "package.module:factory."
    ),
]
_ImagesArg = Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, ...).")]
_TargetOpt = Annotated[int | None, typer.Option(help="Class index to explain (default: the predicted class).")]
_LayerOpt = Annotated[str | None, typer.Option(help="Layer for CAM methods (default: the last spatial layer).")]
_WeightsOpt = Annotated[Path | None, typer.Option(help="Checkpoint (state dict), read with weights_only=True.")]
_TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-checkpoint",
        help="Allow arbitrary pickled objects in --weights and in a .pt2 MODEL (trusted files only).",
    ),
]
_SizeOpt = Annotated[int, typer.Option(help="Images are resized and centre-cropped to SIZE×SIZE.")]
_RawOpt = Annotated[
    bool, typer.Option("--no-normalize", help="Feed [0, 1] pixels instead of ImageNet-normalised ones.")
]


@app.command()
def explain(
    model: _ModelArg,
    images: _ImagesArg,
    method: Annotated[str, typer.Option("--method", "-m", help="Attribution method (see the README).")] = "gradcam",
    target: _TargetOpt = None,
    layer: _LayerOpt = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Method parameter KEY=VALUE, e.g. -p n_steps=64.")
    ] = None,
    weights: _WeightsOpt = None,
    trust_checkpoint: _TrustOpt = False,
    size: _SizeOpt = 224,
    no_normalize: _RawOpt = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the maps, figure and page.")] = Path(
        "runs/explain"
    ),
) -> None:
    """Explain a model's prediction on image files: overlays, maps (.npz) and a self-contained HTML page."""
    from deepscope import plots
    from deepscope.attribution import explain as explain_maps
    from deepscope.report import Figure, Section, write_page

    net, batch, display = _prepare(model, images, weights, trust_checkpoint, size, no_normalize)
    result = explain_maps(net, batch, method, target=target, layer=layer, **_parse_params(param or []))
    maps, signed = result.for_display()
    maps = maps.cpu().numpy()
    titles = [
        f"{p.name}\nclass {t} · score {s:.2f}"
        for p, t, s in zip(images, _targets(result), result.scores.tolist(), strict=True)
    ]
    out.mkdir(parents=True, exist_ok=True)
    grid = plots.attribution_grid(
        display,
        [plots.MapRow(method, maps, signed=signed)],
        out / f"{method}.png",
        titles=titles,
        title=f"{method} on {model}" + (f" · layer {result.layer}" if result.layer else ""),
    )
    saved = result.save(out / f"{method}.npz")
    scale = "signed, blue < 0 < red" if signed else "|map| clipped at its 99th percentile"
    page = write_page(
        out / "explain.html",
        f"deepscope explain — {method}",
        [
            Section(
                "explain",
                f"{method} on {model}",
                (
                    f"Inputs: {', '.join(p.name for p in images)}. "
                    f"Target: {'the predicted class' if target is None else f'class {target}'}; "
                    f"layer: {result.layer or 'input'}; parameters: {result.params}.",
                    f"Maps are scaled per image ({scale}).",
                ),
                figures=(Figure(grid, f"{method} maps over the inputs.", (saved,)),),
            )
        ],
    )
    _console().print(f"maps: {saved.resolve()}\npage: {page.resolve()}")


@app.command()
def compare(
    model: _ModelArg,
    images: _ImagesArg,
    methods: Annotated[
        str, typer.Option("--methods", "-m", help="Comma-separated methods to compare.")
    ] = "saliency,integrated_gradients,guided_backprop,gradcam,occlusion",
    metrics: Annotated[
        str, typer.Option(help="Comma-separated metrics: deletion, insertion, sanity.")
    ] = "deletion,insertion",
    target: _TargetOpt = None,
    layer: _LayerOpt = None,
    weights: _WeightsOpt = None,
    trust_checkpoint: _TrustOpt = False,
    size: _SizeOpt = 224,
    no_normalize: _RawOpt = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the run, figure and page.")] = Path(
        "runs/compare"
    ),
) -> None:
    """Compare attribution methods on image files and score which map to trust (deletion/insertion AUC, sanity)."""
    from deepscope.attribution import compare as compare_methods
    from deepscope.report import build_report

    net, batch, display = _prepare(model, images, weights, trust_checkpoint, size, no_normalize)
    comparison = compare_methods(
        net,
        batch,
        methods=[m.strip() for m in methods.split(",") if m.strip()],
        metrics=[m.strip() for m in metrics.split(",") if m.strip()],
        target=target,
        layer=layer,
        display=_tensor(display),
        captions=[p.name for p in images],
    )
    run = comparison.record(out / "attribution", name=f"{model} on {len(images)} image(s)", overwrite=True)
    page = build_report(out, title=f"deepscope compare — {model}")
    for row in comparison.table():
        _console().print("  ".join(f"{k}={cell(v)}" for k, v in row.items()))
    _console().print(f"run: {run.resolve()}\npage: {page.resolve()}")


@app.command()
def attention(
    model_dir: Annotated[Path, typer.Argument(help="A Hugging Face model folder (config, weights, tokenizer).")],
    text: Annotated[str, typer.Argument(help="The text to run through the model.")],
    layer: Annotated[
        int | None, typer.Option("--layer", "-l", help="Layer of the head view (default: the last).")
    ] = None,
    head: Annotated[
        list[int] | None,
        typer.Option("--head", help="Head(s) of the head view (repeatable; default: the 3 most focused)."),
    ] = None,
    explain_tokens: Annotated[
        bool, typer.Option("--explain", help="Also attribute a classifier's prediction to the tokens (IG).")
    ] = False,
    target: _TargetOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the runs and their report.")] = Path(
        "runs/attention"
    ),
) -> None:
    """A transformer's attention on a text: heads, model view, rollout, entropy (and token attributions)."""
    from deepscope.attention import extract
    from deepscope.report import build_report

    model, tokenizer = _load_hf(model_dir, classifier=explain_tokens)
    batch = tokenizer([text], return_tensors="pt", truncation=True)
    maps = extract(model, batch, tokenizer=tokenizer)
    count, heads = len(maps.layers), maps.per_layer[0].shape[1]
    chosen = count - 1 if layer is None else layer
    if not 0 <= chosen < count:
        raise typer.BadParameter(f"--layer {layer} is out of range: the model has layers 0 to {count - 1}")
    bad = [h for h in head or [] if not 0 <= h < heads]
    if bad:
        raise typer.BadParameter(f"--head {bad[0]} is out of range: each layer has heads 0 to {heads - 1}")
    focused = maps.entropy()[0, chosen].argsort()[:3].tolist()
    shown = list(head) if head else focused
    run = maps.record(out / "attention", name=f"{model_dir.name}: attention", overwrite=True, layer=chosen, heads=shown)
    console = _console()
    tokens = maps.tokens[0]
    console.print(f"{count} layers × {heads} heads, {len(tokens)} tokens; layer {chosen}, heads {shown}")
    for h in shown:
        rows = maps.per_layer[chosen][0, h]
        pairs = ", ".join(
            f"{tokens[i]}→{tokens[int(rows[i].argmax())]} {float(rows[i].max()):.2f}" for i in range(len(tokens))
        )
        console.print(f"  head {h}: {pairs}")
    source = maps.rollout()[0, 0]
    top = source.argsort(descending=True)[:3].tolist()
    console.print("rollout of " + tokens[0] + ": " + ", ".join(f"{tokens[i]} {float(source[i]):.2f}" for i in top))
    if explain_tokens:
        from deepscope.text import explain_text

        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        result = explain_text(model, batch, tokenizer=tokenizer, target=target, class_names=names)
        scores = result.scores[0]
        console.print(
            f"token attributions for {result.label(result.target[0])}: "
            + ", ".join(
                f"{tokens[i]} {float(scores[i]):+.3f}" for i in scores.abs().argsort(descending=True)[:5].tolist()
            )
        )
        result.record(out / "tokens", name=f"{model_dir.name}: token attributions", overwrite=True)
    console.print(f"run: {run.resolve()}\nreport: {build_report(out).resolve()}")


def _load_hf(model_dir: Path, *, classifier: bool) -> tuple[nn.Module, object]:
    """A local Hugging Face model and tokenizer, offline; a classifier only when the folder holds a trained head."""
    if not (model_dir / "config.json").is_file():
        raise typer.BadParameter(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    try:
        from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    except ImportError as err:
        raise typer.BadParameter("reading Hugging Face models needs the hf extra: pip install 'deepscope[hf]'") from err
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    if classifier and not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        raise typer.BadParameter(
            f"--explain needs a text classifier; {model_dir} holds {', '.join(config.architectures or ['no head'])} "
            "(its classification head would be untrained)"
        )
    loader = AutoModelForSequenceClassification if classifier else AutoModel
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return loader.from_pretrained(model_dir, local_files_only=True).eval(), tokenizer


def _prepare(
    spec: str, images: list[Path], weights: Path | None, trust: bool, size: int, raw: bool
) -> tuple[nn.Module, Tensor, np.ndarray]:
    """Load the model and the images (normalised batch + display copy) for explain/compare."""
    from deepscope._images import load_images

    net = _load_cli_model(spec, weights, trust, size=size)
    batch, display = load_images(images, size=size, **({"mean": (0, 0, 0), "std": (1, 1, 1)} if raw else {}))
    return net, batch, display


def _tensor(array: np.ndarray) -> Tensor:
    import torch

    return torch.from_numpy(array)


def _load_cli_model(
    spec: str, weights: Path | None, trust_checkpoint: bool, *, size: int | None = None, resized: bool = False
) -> nn.Module:
    """The model; one exported for a single image size must take ``size`` (and cannot take ``resized`` images)."""
    from deepscope._loading import fixed_image_size, load_model

    if "" not in sys.path and str(Path.cwd()) not in sys.path:  # like `python -m`: module:factory from the cwd
        sys.path.insert(0, str(Path.cwd()))
    net = load_model(spec, weights=weights, trust_checkpoint=trust_checkpoint)
    fixed = fixed_image_size(net)
    if fixed is not None and (resized or (size is not None and fixed != (size, size))):
        side = f"--size {fixed[0]}" if fixed[0] == fixed[1] else "square images"
        how = f"--transforms none and {side}" if resized else side
        raise typer.BadParameter(
            f"{spec} was exported for {fixed[0]}×{fixed[1]} images only{', which transforms resize' if resized else ''}"
            f": it needs {how}, or an export with a dynamic height and width"
        )
    return net


def _targets(result: AttributionMap) -> list[int | str]:
    target = result.target
    return list(target) if isinstance(target, list) else [target] * result.maps.shape[0]


def _parse_params(items: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` pairs with int, float, bool, None or string values."""
    params: dict[str, object] = {}
    for key, value in _parse_settings(items).items():
        lowered = value.lower()
        if lowered in ("true", "false"):
            params[key] = lowered == "true"
        elif lowered == "none":
            params[key] = None
        else:
            for kind in (int, float):
                try:
                    params[key] = kind(value)
                    break
                except ValueError:
                    continue
            else:
                params[key] = value
    return params


def _print_layers(infos: list, *, with_shapes: bool) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("name", "type", "params", "trainable") + (("output shape",) if with_shapes else ()):
        table.add_column(column, justify="right" if column in ("params", "trainable") else "left")
    for info in infos:
        row = ["  " * (info.depth - 1) + info.name, info.type, f"{info.params_total:,}", f"{info.trainable:,}"]
        if with_shapes:
            row.append("×".join(map(str, info.output_shape)) if info.output_shape else "—")
        table.add_row(*row)
    _console().print(table)


def _print_findings(findings: list) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("severity", "check", "finding", "steps", "try next"):
        table.add_column(column, overflow="fold")
    for finding in findings:
        steps = "" if finding.step_start is None else f"{finding.step_start}-{finding.step_end}"
        table.add_row(
            finding.severity, finding.check, finding.title, steps, finding.actions[0] if finding.actions else ""
        )
    _console().print(table)


def _parse_settings(items: list[str]) -> dict[str, str]:
    pairs = [item.partition("=") for item in items]
    bad = [item for item, (key, sep, _) in zip(items, pairs, strict=True) if not sep or not key.strip()]
    if bad:
        raise typer.BadParameter(f"--set expects KEY=VALUE, got {bad[0]!r}")
    return {key.strip(): value.strip() for key, _, value in pairs}


def _parse_shape(text: str) -> tuple[int, ...]:
    parts = text.replace("x", ",").replace("×", ",").split(",")
    if not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise typer.BadParameter(f"{text!r} is not a shape of positive integers; write it like 1,3,224,224")
    return tuple(int(part) for part in parts)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status (the console-script entry point)."""
    from deepscope.errors import DeepscopeError

    args = (sys.argv[1:] if argv is None else argv) or ["--help"]
    try:
        status = app(args=args, prog_name="deepscope", standalone_mode=False)  # an Exit's code is returned
    except typer.Exit as done:
        return done.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except typer.TyperException as error:  # bad options or arguments: one line, like every user error
        typer.echo(f"error: {error.format_message()} (see `deepscope --help`)", err=True)
        return error.exit_code
    except (DeepscopeError, FileNotFoundError, ValueError, TypeError, KeyError) as error:
        if _state["debug"] or "--debug" in args:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        typer.echo(f"error: {message}", err=True)
        return 2
    return status if isinstance(status, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
