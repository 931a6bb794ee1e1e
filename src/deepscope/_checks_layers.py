"""Doctor checks on the layer health of a run: dead units, fading signal, gradient flow, updates, residual blocks."""

from __future__ import annotations

import numpy as np

from deepscope._diagnosis import Finding, RunView, Thresholds, bars_plot, late, late_start, lines_plot, register

__all__: list[str] = []  # the checks are reached through deepscope.diagnostics.CHECKS


def _late_medians(values: np.ndarray, limits: Thresholds) -> np.ndarray:
    """Per-layer median over the last part of the measured steps (NaN for layers never measured)."""
    tail = late(values, limits.late_fraction)
    medians = np.full(len(values), np.nan)
    measured = np.isfinite(tail).any(axis=1)
    medians[measured] = np.nanmedian(tail[measured], axis=1)
    return medians


def _measured(values: np.ndarray) -> list[int]:
    return [j for j in range(len(values)) if np.isfinite(values[j]).any()]


@register("dead_units", "implementation")
def dead_units(run: RunView, limits: Thresholds) -> list[Finding]:
    """Activation layers where most channels never fire over a whole training batch (dead ReLUs)."""
    found = run.statistic("dead_channels")
    if found is None:
        return []
    steps, values, layers = found
    medians = _late_medians(values, limits)
    watched = _measured(values)
    bad = [j for j in watched if medians[j] > limits.dead_share]
    if not bad:
        return []
    worst = max(bad, key=lambda j: medians[j])
    severity = "error" if medians[worst] >= 0.95 else "warning"
    evidence = {"layers": {layers[j]: float(medians[j]) for j in bad}, "threshold": limits.dead_share}
    names = ", ".join(f"{layers[j]} ({medians[j]:.0%})" for j in bad)
    tail_start = late_start(steps, limits.late_fraction)
    return [
        Finding(
            "dead_units",
            severity,
            f"dead units: {names} of the channels never fire over a training batch",
            evidence,
            (
                "check the initialisation and input scale (He/Kaiming init, zero-mean inputs, biases not negative)",
                "lower the learning rate (a too-large step pushes ReLUs into the dead zone for good)",
                "use LeakyReLU/GELU or add normalisation before the activations",
            ),
            step_start=tail_start,
            step_end=int(steps[-1]),
            plot=bars_plot(
                "Dead channels per activation layer (median, last half)",
                "share of channels never active",
                [layers[j] for j in watched],
                [medians[j] for j in watched],
                references=[("threshold", limits.dead_share)],
                y_limits=(0.0, 1.0),
            ),
        )
    ]


@register("low_activation_energy", "capacity")
def low_activation_energy(run: RunView, limits: Thresholds) -> list[Finding]:
    """The deepest watched activation carries a small fraction of the first one's spread: the signal fades."""
    found, dead = run.statistic("act_std"), run.statistic("dead_channels")
    if found is None or dead is None:
        return []
    steps, values, layers = found
    activations = _measured(dead[1])  # activation modules (the only ones with dead-unit counts)
    if len(activations) < 2:
        return []
    medians = _late_medians(values, limits)
    first, last = medians[activations[0]], medians[activations[-1]]
    if not (np.isfinite(first) and np.isfinite(last) and first > 0 and last < limits.energy_ratio * first):
        return []
    evidence = {
        "first_layer": layers[activations[0]],
        "first_std": float(first),
        "deepest_layer": layers[activations[-1]],
        "deepest_std": float(last),
        "ratio": float(last / first),
    }
    return [
        Finding(
            "low_activation_energy",
            "warning",
            f"the signal fades with depth: {layers[activations[-1]]} spreads {last / first:.1%} "
            f"of {layers[activations[0]]}'s",
            evidence,
            (
                "add normalisation (BatchNorm/LayerNorm) or residual connections between the layers",
                "check the initialisation scale of the deep layers (Kaiming for ReLU, Xavier for tanh)",
            ),
            step_start=late_start(steps, limits.late_fraction),
            step_end=int(steps[-1]),
            plot=bars_plot(
                "Activation std per activation layer (median, last half)",
                "activation std",
                [layers[j] for j in activations],
                [medians[j] for j in activations],
                log_y=True,
            ),
        )
    ]


@register("vanishing_gradients", "implementation")
def vanishing_gradients(run: RunView, limits: Thresholds) -> list[Finding]:
    """The gradient norm of the first layer is orders of magnitude below (or above) the last layer's."""
    found = run.statistic("grad_norm")
    if found is None:
        return []
    steps, values, layers = found
    with_grads = _measured(values)
    if len(with_grads) < 2:
        return []
    first, last = with_grads[0], with_grads[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = values[first] / values[last]
    tail = late(ratio[None], limits.late_fraction)[0]
    typical = float(np.nanmedian(tail)) if np.isfinite(tail).any() else np.nan
    if not np.isfinite(typical) or limits.vanishing_ratio <= typical <= limits.exploding_ratio:
        return []
    vanishing = typical < limits.vanishing_ratio
    kind = "vanishing" if vanishing else "exploding"
    evidence = {
        "first_layer": layers[first],
        "last_layer": layers[last],
        "median_ratio_last_half": typical,
        "threshold": limits.vanishing_ratio if vanishing else limits.exploding_ratio,
    }
    actions = (
        (
            "use ReLU-family activations instead of sigmoid/tanh stacks, or fewer layers",
            "add residual connections and normalisation layers",
            "use a variance-preserving init (Kaiming/Xavier)",
        )
        if vanishing
        else ("clip the gradient norm and lower the learning rate", "add normalisation layers; check the init scale")
    )
    return [
        Finding(
            "vanishing_gradients",
            "error" if typical < limits.vanishing_ratio**2 or typical > limits.exploding_ratio**2 else "warning",
            f"{kind} gradients: ‖∇{layers[first]}‖ / ‖∇{layers[last]}‖ = {typical:.1e} (median of the last half)",
            evidence,
            actions,
            step_start=late_start(steps, limits.late_fraction),
            step_end=int(steps[-1]),
            plot=lines_plot(
                "Gradient norm of the first and last layers",
                "gradient L2 norm",
                [(layers[first], steps, values[first]), (layers[last], steps, values[last])],
                log_y=True,
            ),
        )
    ]


@register("update_ratio", "learning rate")
def update_ratio(run: RunView, limits: Thresholds) -> list[Finding]:
    """Layers whose update/weight ratio stays far from the healthy ≈ 1e-3: frozen, or rewritten every step."""
    found = run.statistic("update_ratio")
    if found is None:
        return []
    steps, values, layers = found
    watched = _measured(values)
    medians = _late_medians(values, limits)
    low = [j for j in watched if medians[j] < limits.update_low]
    high = [j for j in watched if medians[j] > limits.update_high]
    findings = []
    for group, kind, bound in ((low, "frozen", limits.update_low), (high, "unstable", limits.update_high)):
        if not group:
            continue
        names = ", ".join(f"{layers[j]} ({medians[j]:.1e})" for j in group)
        actions = (
            (
                "raise the learning rate, or check the gradient reaches these layers (see vanishing gradients)",
                "check the layers are not frozen by mistake (requires_grad) and that the optimiser holds them",
            )
            if kind == "frozen"
            else ("lower the learning rate (or the learning rate of these layers)", "add warm-up, or weight decay")
        )
        findings.append(
            Finding(
                "update_ratio",
                "warning",
                f"{kind} layers, update/weight ratio {'<' if kind == 'frozen' else '>'} {bound:g}: {names}",
                {"layers": {layers[j]: float(medians[j]) for j in group}, "bound": bound, "healthy": 1e-3},
                actions,
                step_start=late_start(steps, limits.late_fraction),
                step_end=int(steps[-1]),
                plot=bars_plot(
                    "Update / weight ratio per layer (median, last half)",
                    "‖Δw‖ / ‖w‖",
                    [layers[j] for j in watched],
                    [medians[j] for j in watched],
                    references=[("healthy ≈ 1e-3", 1e-3), (f"{kind} bound", bound)],
                    log_y=True,
                ),
            )
        )
    return findings


@register("residual_idle", "implementation")
def residual_idle(run: RunView, limits: Thresholds) -> list[Finding]:
    """Residual blocks whose branch stays negligible next to the skip path: the block does nothing."""
    if run.residual is None:
        return []
    steps, ratios, blocks = run.residual
    medians = _late_medians(ratios, limits)
    idle = [j for j in _measured(ratios) if medians[j] < limits.residual_min]
    if not idle:
        return []
    names = ", ".join(f"{blocks[j]} ({medians[j]:.1e})" for j in idle)
    return [
        Finding(
            "residual_idle",
            "info",
            f"residual blocks that add almost nothing (‖F(x)‖ / ‖x‖): {names}",
            {"blocks": {blocks[j]: float(medians[j]) for j in idle}, "threshold": limits.residual_min},
            (
                "check the branch is wired in (its output added to the skip path) and receives gradients",
                "if the network is deep enough without them, remove the idle blocks (they cost compute for nothing)",
            ),
            step_start=late_start(steps, limits.late_fraction),
            step_end=int(steps[-1]),
            plot=lines_plot(
                "Residual ratio ‖F(x)‖ / ‖x‖",
                "ratio",
                [(blocks[j], steps, ratios[j]) for j in idle],
                references=[("threshold", limits.residual_min)],
                log_y=True,
            ),
        )
    ]
