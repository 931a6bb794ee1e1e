"""Attribution speed (and memory) against each method's cost floor and against captum, pytorch-grad-cam and torchcam.

Run: python bench/bench_attribution.py [--quick] [--methods gradcam,saliency] [--memory]

Everything runs in one process on the same inputs: torchvision resnet18 / resnet50 (weights=None,
eval mode, weights from a fixed seed) at 224 px, batches of 1 and 8, on the CPU, explaining each
image's predicted class. Each row of the table is one method: first its floor, then deepscope, then
the anchors, each as the median wall time of a few calls after one warm-up (the implementations
take turns, so machine noise is shared), and its ratio to the floor. The floors (DESIGN §4):

- CAM family: one inference-mode forward of the batch;
- saliency, input × gradient, guided backprop, deconvnet, guided Grad-CAM: one forward + backward to
  the input;
- Integrated Gradients, SmoothGrad: n × (forward + backward) on the n × B copies, in blocks of the
  method's ``batch_size``;
- occlusion, Score-CAM, RISE: the inference-mode forwards of all perturbed images, batched.

Anchors run on deep copies of the model (several of them leave hooks or switch modes). Anchor maps
are upsampled to the input size like deepscope's (captum's LayerGradCam and torchcam return
layer-resolution maps; pytorch-grad-cam resizes with OpenCV itself). A row whose deepscope method
is not registered yet is skipped with a note, and so is a row whose estimated cost per call exceeds
``--budget`` seconds (Score-CAM on resnet50 runs 2048 forwards per image).

``--memory`` also runs every measurement once in a fresh subprocess and reports the growth of the
peak resident set during that first call, in MiB, and its ratio to the floor's (``VmHWM`` after a
``clear_refs`` reset on Linux, else ``ru_maxrss``; see :func:`peak_mib`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Score-CAM draws progress bars

import torch
import torch.nn.functional as F
from torch import nn

SIZE = 224
LAYER = "layer4"
GRAD_BATCH = 32  # batch_size of IG / SmoothGrad blocks and of Score-CAM forwards
PERTURB_BATCH = 64  # batch_size of occlusion and RISE forwards
IG_STEPS = 32
SG_SAMPLES = 16
SG_SIGMA = 0.15
OCC_WINDOW, OCC_STRIDE = 32, 16
RISE_MASKS = 500
TOP_K = 64


# --------------------------------------------------------------------------- the measured setting


@dataclass
class Setting:
    """One model and batch: everything a floor, deepscope or an anchor needs."""

    arch: str
    batch: int
    model: nn.Module
    x: torch.Tensor  # (B, 3, 224, 224)
    target: list[int]  # predicted class per image
    channels: int  # channels of LAYER
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def copy(self) -> nn.Module:
        return copy.deepcopy(self.model)


def make_setting(arch: str, batch: int, target: list[int] | None = None) -> Setting:
    """The model (weights from seed 0), the inputs (seed 0) and the predicted classes (unless given).

    A memory child passes ``target`` so that no forward pass raises the peak RSS before its baseline.
    """
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, SIZE, SIZE, generator=g)
    if target is None:
        with torch.inference_mode():
            target = model(x).argmax(1).tolist()
    layer = dict(model.named_modules())[LAYER]
    channels = next(m for m in reversed(list(layer.modules())) if isinstance(m, nn.Conv2d)).out_channels
    return Setting(arch, batch, model, x, target, channels)


def upsample(maps: torch.Tensor) -> torch.Tensor:
    return F.interpolate(maps[:, None] if maps.ndim == 3 else maps, size=(SIZE, SIZE), mode="bilinear")


# --------------------------------------------------------------------------- floors


def floor_forward(s: Setting) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return s.model(s.x)

    return run


def _fwd_bwd(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = model(x)
        return torch.autograd.grad(out.gather(1, target[:, None]).sum(), x)[0]


def floor_fwd_bwd(s: Setting) -> Callable[[], Any]:
    target = torch.tensor(s.target)
    return lambda: _fwd_bwd(s.model, s.x, target)


def floor_copies_fwd_bwd(copies: int) -> Callable[[Setting], Callable[[], Any]]:
    """``copies × B`` forward + backward passes to the input, in blocks of GRAD_BATCH."""

    def make(s: Setting) -> Callable[[], Any]:
        total = copies * s.batch
        images = s.x.repeat(copies, 1, 1, 1)  # (copies * B, 3, H, W)
        target = torch.tensor(s.target * copies)

        def run() -> None:
            for start in range(0, total, GRAD_BATCH):
                _fwd_bwd(s.model, images[start : start + GRAD_BATCH], target[start : start + GRAD_BATCH])

        return run

    return make


def floor_forwards(count: Callable[[Setting], int], batch: int) -> Callable[[Setting], Callable[[], Any]]:
    """``count(s) × B`` inference-mode forwards, in blocks of ``batch`` (fresh products, as a method makes them)."""

    def make(s: Setting) -> Callable[[], Any]:
        total = count(s) * s.batch
        mask = torch.rand(min(batch, total), 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))

        def run() -> None:
            with torch.inference_mode():
                for start in range(0, total, batch):
                    n = min(batch, total - start)
                    s.model(s.x[torch.arange(start, start + n) % s.batch] * mask[:n])

        return run

    return make


# --------------------------------------------------------------------------- anchors


def captum_method(name: str, **kwargs: Any) -> Callable[[Setting], Callable[[], Any]]:
    def make(s: Setting) -> Callable[[], Any]:
        import captum.attr as ca

        model = s.copy()
        x = s.x
        if name == "LayerGradCam":
            algo = ca.LayerGradCam(model, getattr(model, LAYER))
            return lambda: upsample(algo.attribute(x, target=s.target, relu_attributions=True))
        if name == "GuidedGradCam":
            algo = ca.GuidedGradCam(model, getattr(model, LAYER))
            return lambda: algo.attribute(x, target=s.target)
        if name == "NoiseTunnel":
            algo = ca.NoiseTunnel(ca.Saliency(model))
            stdev = SG_SIGMA * float(x.max() - x.min())
            per = max(1, GRAD_BATCH // s.batch)
            return lambda: algo.attribute(
                x, nt_type="smoothgrad", nt_samples=SG_SAMPLES, nt_samples_batch_size=per, stdevs=stdev, target=s.target
            )
        if name == "Occlusion":
            algo = ca.Occlusion(model)
            per = max(1, PERTURB_BATCH // s.batch)
            return lambda: algo.attribute(
                x,
                target=s.target,
                sliding_window_shapes=(3, OCC_WINDOW, OCC_WINDOW),
                strides=(3, OCC_STRIDE, OCC_STRIDE),
                baselines=0.0,
                perturbations_per_eval=per,
            )
        algo = getattr(ca, name)(model)
        return lambda: algo.attribute(x, target=s.target, **kwargs)

    return make


def gradcam_lib(name: str) -> Callable[[Setting], Callable[[], Any]]:
    def make(s: Setting) -> Callable[[], Any]:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        model = s.copy()
        cam = getattr(pgc, name)(model=model, target_layers=[getattr(model, LAYER)])
        if name == "ScoreCAM":
            cam.batch_size = GRAD_BATCH
        s.cleanups.append(cam.activations_and_grads.release)
        targets = [ClassifierOutputTarget(c) for c in s.target]
        return lambda: cam(input_tensor=s.x, targets=targets)

    return make


def torchcam_lib(name: str) -> Callable[[Setting], Callable[[], Any]]:
    def make(s: Setting) -> Callable[[], Any]:
        import torchcam.methods as tm

        model = s.copy()
        kwargs: dict[str, Any] = {"fc_layer": "fc"} if name == "CAM" else {}
        if name == "ScoreCAM":
            kwargs["batch_size"] = GRAD_BATCH
        extractor = getattr(tm, name)(model, target_layer=LAYER, input_shape=(3, SIZE, SIZE), **kwargs)
        s.cleanups.append(extractor.remove_hooks)
        no_grad = name in ("CAM", "ScoreCAM")

        def run() -> Any:
            with torch.set_grad_enabled(not no_grad):
                out = model(s.x)
                cams = extractor(class_idx=s.target, scores=out)
            return upsample(cams[0])

        return run

    return make


# --------------------------------------------------------------------------- the rows


@dataclass(frozen=True)
class Row:
    """One method: its deepscope key and parameters, its floor and its anchors."""

    key: str
    floor: Callable[[Setting], Callable[[], Any]]
    floor_name: str
    params: dict[str, Any] = field(default_factory=dict)
    anchors: dict[str, Callable[[Setting], Callable[[], Any]]] = field(default_factory=dict)
    cost: Callable[[Setting], float] = lambda s: 1.0  # floor cost in forward-equivalents of the batch


def _cam_row(key: str, pgc_name: str | None, torchcam_name: str | None, **extra: Any) -> Row:
    anchors = dict(extra)
    if pgc_name:
        anchors[f"grad-cam {pgc_name}"] = gradcam_lib(pgc_name)
    if torchcam_name:
        anchors[f"torchcam {torchcam_name}"] = torchcam_lib(torchcam_name)
    return Row(key, floor_forward, "inference forward", anchors=anchors)


ROWS: dict[str, Row] = {
    "cam": _cam_row("cam", None, "CAM"),
    "gradcam": _cam_row("gradcam", "GradCAM", "GradCAM", **{"captum LayerGradCam": captum_method("LayerGradCam")}),
    "gradcam_pp": _cam_row("gradcam_pp", "GradCAMPlusPlus", "GradCAMpp"),
    "xgradcam": _cam_row("xgradcam", "XGradCAM", "XGradCAM"),
    "layercam": _cam_row("layercam", "LayerCAM", "LayerCAM"),
    "saliency": Row(
        "saliency",
        floor_fwd_bwd,
        "forward+backward",
        anchors={"captum Saliency": captum_method("Saliency")},
        cost=lambda s: 3,
    ),
    "input_x_gradient": Row(
        "input_x_gradient",
        floor_fwd_bwd,
        "forward+backward",
        anchors={"captum InputXGradient": captum_method("InputXGradient")},
        cost=lambda s: 3,
    ),
    "guided_backprop": Row(
        "guided_backprop",
        floor_fwd_bwd,
        "forward+backward",
        anchors={"captum GuidedBackprop": captum_method("GuidedBackprop")},
        cost=lambda s: 3,
    ),
    "deconvnet": Row(
        "deconvnet",
        floor_fwd_bwd,
        "forward+backward",
        anchors={"captum Deconvolution": captum_method("Deconvolution")},
        cost=lambda s: 3,
    ),
    "guided_gradcam": Row(
        "guided_gradcam",
        floor_fwd_bwd,
        "forward+backward",
        anchors={"captum GuidedGradCam": captum_method("GuidedGradCam")},
        cost=lambda s: 3,
    ),
    "integrated_gradients": Row(
        "integrated_gradients",
        floor_copies_fwd_bwd(IG_STEPS),
        f"{IG_STEPS}×(fwd+bwd)",
        params={"n_steps": IG_STEPS, "batch_size": GRAD_BATCH, "rule": "gauss_legendre"},
        anchors={
            "captum IntegratedGradients": captum_method(
                "IntegratedGradients", n_steps=IG_STEPS, method="gausslegendre", internal_batch_size=GRAD_BATCH
            )
        },
        cost=lambda s: 3 * IG_STEPS,
    ),
    "smoothgrad": Row(
        "smoothgrad",
        floor_copies_fwd_bwd(SG_SAMPLES),
        f"{SG_SAMPLES}×(fwd+bwd)",
        params={"n_samples": SG_SAMPLES, "sigma": SG_SIGMA, "batch_size": GRAD_BATCH},
        anchors={"captum NoiseTunnel(Saliency)": captum_method("NoiseTunnel")},
        cost=lambda s: 3 * SG_SAMPLES,
    ),
    "occlusion": Row(
        "occlusion",
        floor_forwards(lambda s: ((SIZE - OCC_WINDOW) // OCC_STRIDE + 1) ** 2, PERTURB_BATCH),
        f"{((SIZE - OCC_WINDOW) // OCC_STRIDE + 1) ** 2} fwd/img",
        params={"window": OCC_WINDOW, "stride": OCC_STRIDE, "batch_size": PERTURB_BATCH},
        anchors={"captum Occlusion": captum_method("Occlusion")},
        cost=lambda s: ((SIZE - OCC_WINDOW) // OCC_STRIDE + 1) ** 2,
    ),
    "rise": Row(
        "rise",
        floor_forwards(lambda s: RISE_MASKS, PERTURB_BATCH),
        f"{RISE_MASKS} fwd/img",
        params={"n_masks": RISE_MASKS, "batch_size": PERTURB_BATCH},
        cost=lambda s: RISE_MASKS,
    ),
    "scorecam": Row(
        "scorecam",
        floor_forwards(lambda s: s.channels, GRAD_BATCH),
        "C fwd/img",
        params={"batch_size": GRAD_BATCH},
        anchors={"grad-cam ScoreCAM": gradcam_lib("ScoreCAM"), "torchcam ScoreCAM": torchcam_lib("ScoreCAM")},
        cost=lambda s: s.channels,
    ),
    "scorecam_top64": Row(
        "scorecam",
        floor_forwards(lambda s: TOP_K, GRAD_BATCH),
        f"{TOP_K} fwd/img",
        params={"batch_size": GRAD_BATCH, "top_k": TOP_K},
        cost=lambda s: TOP_K,
    ),
}


def deepscope_impl(row: Row) -> Callable[[Setting], Callable[[], Any]]:
    def make(s: Setting) -> Callable[[], Any]:
        import deepscope as ds
        from deepscope.attribution.base import ATTRIBUTIONS

        params = dict(row.params)
        fields = getattr(ATTRIBUTIONS.get(row.key), "__dataclass_fields__", {})
        if "generator" in fields:
            params["generator"] = torch.Generator().manual_seed(0)
        if row.key == "smoothgrad":
            from deepscope.attribution import smooth

            method: Any = smooth("saliency", **params)
            params = {}
        else:
            method = row.key
        layer = LAYER if ATTRIBUTIONS.get(row.key).needs_layer else None
        return lambda: ds.explain(s.model, s.x, method, target=s.target, layer=layer, **params)

    return make


def implementations(row: Row) -> dict[str, Callable[[Setting], Callable[[], Any]]]:
    return {"floor": row.floor, "deepscope": deepscope_impl(row), **row.anchors}


# --------------------------------------------------------------------------- measuring


def peak_mib() -> float:
    """This process's peak resident set in MiB.

    ``VmHWM`` of ``/proc/self/status`` where it exists: ``ru_maxrss`` also counts the parent's
    peak (the kernel carries it over ``exec`` from the forked parent's memory map), so in a child
    of this benchmark it starts at the parent's size and a call's growth would read as 0.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak() -> None:
    """Lower the peak to the current resident set (Linux >= 4.0), so setup transients do not hide a call's."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def child(spec: dict[str, Any]) -> None:
    """Run one implementation once in this fresh process and print its peak-memory growth (JSON)."""
    torch.set_num_threads(spec["threads"])
    import captum.attr  # noqa: F401  (imports before the baseline)
    import pytorch_grad_cam  # noqa: F401
    import torchcam.methods  # noqa: F401

    import deepscope.attribution  # noqa: F401

    s = make_setting(spec["arch"], spec["batch"], spec["target"])
    run = implementations(ROWS[spec["row"]])[spec["impl"]](s)
    reset_peak()
    before = peak_mib()
    run()
    print(json.dumps({"extra_mib": peak_mib() - before}))


def memory_of(s: Setting, row: str, impl: str, threads: int) -> float | None:
    spec = json.dumps(
        {"arch": s.arch, "batch": s.batch, "target": s.target, "row": row, "impl": impl, "threads": threads}
    )
    done = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"    (memory of {impl} failed: {done.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["extra_mib"]


def registered() -> set[str]:
    try:
        import deepscope.attribution  # noqa: F401  (fills the registry)
        from deepscope.attribution.base import ATTRIBUTIONS
    except ImportError as err:
        print(f"note: deepscope.attribution does not import ({err}); only floors and anchors would run")
        return set()
    return set(ATTRIBUTIONS.names())


def bench_row(name: str, row: Row, s: Setting, args: argparse.Namespace, forward_s: float) -> None:
    estimate = row.cost(s) * forward_s
    if estimate > args.budget:
        print(f"  {name:<22} skipped: ~{estimate:.0f} s per call > --budget {args.budget:.0f} s")
        return
    runs: dict[str, Callable[[], Any]] = {}
    for impl, make in implementations(row).items():
        try:
            runs[impl] = make(s)
            runs[impl]()  # warm-up, and a check that it works here
        except Exception as err:  # an anchor that cannot do this model is reported, not fatal
            first_line = (str(err).splitlines() or [""])[0][:100]
            print(f"  {name:<22} {impl}: failed ({type(err).__name__}: {first_line})")
            runs.pop(impl, None)
    if "floor" not in runs:
        return
    first = time.perf_counter()
    runs["floor"]()
    per_call = time.perf_counter() - first
    repeats = max(1, min(args.repeats, int(args.row_seconds / max(per_call * len(runs), 1e-9))))
    times: dict[str, list[float]] = {impl: [] for impl in runs}
    for _ in range(repeats):  # take turns so that machine noise is shared
        for impl, run in runs.items():
            start = time.perf_counter()
            run()
            times[impl].append(time.perf_counter() - start)
    for cleanup in s.cleanups:
        cleanup()
    s.cleanups.clear()
    pick = min if args.stat == "min" else statistics.median
    median = {impl: pick(t) for impl, t in times.items()}
    memory = {}
    if args.memory:
        memory = {impl: memory_of(s, name, impl, args.threads) for impl in runs}
    anchors = [median[i] for i in runs if i not in ("floor", "deepscope")]
    for impl in runs:
        label = f"floor: {row.floor_name}" if impl == "floor" else impl
        ratio = median[impl] / median["floor"]
        line = f"  {name:<22} {label:<32} {1000 * median[impl]:>10.1f} {ratio:>8.2f}x"
        line += f" {'' if impl != 'deepscope' or not anchors else f'{median[impl] / min(anchors):.2f}x':>9}"
        if args.memory:
            extra, base = memory.get(impl), memory.get("floor")
            mem_ratio = f"{extra / base:.2f}x" if extra is not None and base else "-"
            line += f" {'-' if extra is None else f'{extra:.0f}':>9} {mem_ratio:>8}"
        print(line + (f"   ({args.stat} of {repeats})" if impl == "floor" else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18, B=1, 3 repeats")
    parser.add_argument("--methods", help=f"comma-separated rows (default: all): {','.join(ROWS)}")
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, help="timed calls per implementation (default 7, --quick 3)")
    parser.add_argument(
        "--stat", choices=("median", "min"), default="median", help="min resists other load on a shared machine"
    )
    parser.add_argument("--row-seconds", type=float, default=30.0, help="fewer repeats for rows slower than this")
    parser.add_argument("--budget", type=float, default=60.0, help="skip rows estimated slower per call (s)")
    parser.add_argument("--memory", action="store_true", help="peak-RSS growth of each call, in subprocesses")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="captum")  # "Input Tensor 0 did not already require gradients"
    if args.quick:
        args.archs, args.batches = "resnet18", "1"
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    names = args.methods.split(",") if args.methods else list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; valid: {', '.join(ROWS)}")
    available = registered()
    print(f"torch {torch.__version__}, {args.threads} threads, CPU; times in ms ({args.stat}); ratios to the floor")
    header = f"  {'method':<22} {'implementation':<32} {'ms':>10} {'×floor':>9} {'×anchor':>9}"
    if args.memory:
        header += f" {'extra MiB':>9} {'×floor':>8}"
    for arch in args.archs.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            s = make_setting(arch, batch)
            forward = floor_forward(s)
            forward()
            start = time.perf_counter()
            forward()
            forward_s = time.perf_counter() - start
            print(f"\n{arch}, B={batch}, {SIZE} px (one inference forward: {1000 * forward_s:.0f} ms)")
            print(header)
            for name in names:
                row = ROWS[name]
                if row.key not in available:
                    print(f"  {name:<22} skipped: {row.key!r} is not registered in deepscope.attribution.ATTRIBUTIONS")
                    continue
                bench_row(name, row, s, args, forward_s)
    print("\n×anchor: deepscope's time over the fastest anchor's (below 1: deepscope is faster)")


if __name__ == "__main__":
    main()
