"""Tag and meta-key names of a recorded run: the one vocabulary of the Recorder's probes and of their readers.

Writers (the probes) and readers (report, export, dashboard) import the same constants, and this
module imports nothing, so the readers stay free of torch.
"""

from __future__ import annotations

__all__ = ["TAGS"]


class TAGS:
    """Tag names the Recorder writes; the report reads the same constants."""

    LOSS = "train/loss"
    TRAIN_METRIC = "train/{name}"
    EVAL_METRIC = "eval/{name}"
    EVAL_LOSS = "eval/loss"  # rec.eval_step({"loss": ...})
    STEP_TIME = "train/step_time_s"
    LR = "train/lr"  # one group; "train/lr/{i}" for several
    SAMPLES_PER_S = "train/samples_per_s"
    ACCURACY = "probe/accuracy"
    BALANCED_ACCURACY = "probe/balanced_accuracy"
    PROBE_INPUTS = "probe/inputs"
    PROBE_LABELS = "probe/labels"
    PROBE_OUTPUT = "probe/output"
    PROBE_PRED = "probe/pred"
    REPR = "repr/{layer}"
    GRID_SCORE = "input/grid_score"
    EVOLUTION = "evolution/{layer}"  # + "/patches", "/projections", "/scores", "/images" per snapshot; meta: field
    # run-level meta keys
    MAJORITY_BASELINE = "probe/majority_baseline"
    CLASS_NAMES = "probe/class_names"
    LAYERS = "repr/layers"
    PROJECTION = "repr/projection"  # "repr/projection/{layer}"
    POOLING = "repr/pooling"  # "repr/pooling/{layer}"
    GRID_EXTENT = "input/grid_extent"
    EVOLUTION_LAYERS = "evolution/layers"
    EVERY = "recorder/every"
    SNAPSHOT_EVERY = "recorder/snapshot_every"
    PROBES = "recorder/probes"  # names of the probes that recorded the run
    HEALTH = "health/values"  # (statistics, layers) table per recorded step
    HEALTH_LAYERS = "health/layers"
    HEALTH_STATISTICS = "health/statistics"
    HEALTH_ACTIVATION_LAYERS = "health/activation_layers"  # the watched activation modules (dead units live there)
    RESIDUAL = "health/residual"  # (blocks,) ‖F(x)‖ / ‖skip(x)‖ per recorded step
    RESIDUAL_BLOCKS = "health/residual_blocks"
    HEALTH_NONFINITE = "health/first_nonfinite_step"
    DISTRIBUTIONS = "health/distributions"  # (layers, 2, summary): output and weight summaries per recorded step
    HISTOGRAM_BINS = "health/histogram_bins"
    QUANTILE_LEVELS = "health/quantile_levels"
    ATTRIBUTION = "attribution"  # prefix of every tag and meta key written by Comparison.record
    LAYER_VIEWS = "layers"  # prefix of every tag and meta key written by LayerInspection.record
    EVALUATION = "evaluation"  # prefix of every tag and meta key written by Evaluation.record
    ATTENTION = "attention"  # prefix of every tag and meta key written by Attention.record
    TEXT = "text"  # prefix of every tag and meta key written by TokenAttribution.record
    FEATURE_VIS = "featurevis"  # prefix of every tag and meta key written by featurevis.record_feature_vis
    EXPLAIN_DATASET = "explain_dataset"  # prefix of every tag and meta key written by DatasetExplanation.record
    ENVIRONMENT = "repro/environment"  # what the run ran on (deepscope._environment), written when a run is created
    FOOTPRINT = "repro/footprint"  # energy, CO₂-eq and water of the recorded block (Recorder(footprint=True))
    MANIFEST = "repro/manifest"  # prefix of every meta key written by SplitManifest.record
    DOCTOR_CHECKS = "doctor/checks"  # the checks whose findings the run holds (deepscope.diagnostics.doctor)
