"""The examples kept for each confusion cell: a running top-k by loss per (true, predicted) pair.

:func:`deepscope.evaluation.evaluate` feeds :class:`CellSelector` every batch of its single pass; the selector
keeps, per cell, only the dataset positions and losses of the ``per_cell`` highest-loss examples seen so far
(ties: the earlier position), so its memory is bounded by ``classes² · per_cell`` numbers, never by the data.
After the pass :func:`cell_examples` caps the total (:data:`MAX_EXAMPLES`, and :data:`MAX_INPUT_BYTES` of
inputs) and fetches the kept inputs back by position, as the error gallery does. In a diagonal cell the
highest-loss examples are the least confident correct ones (there ``p(true) = p(pred)``).
:func:`cell_note` words what a cell of a recorded run shows, for the dashboard (this module imports no torch).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from deepscope._tags import TAGS

if TYPE_CHECKING:  # torch-free at import: the dashboard words its notes with cell_note
    from torch import Tensor

__all__ = ["MAX_EXAMPLES", "MAX_INPUT_BYTES", "CellExamples", "CellSelector", "cell_examples", "cell_note"]

MAX_EXAMPLES = 2000  # kept examples over all cells
MAX_INPUT_BYTES = 256 * 2**20  # their float32 inputs in memory (half of it, float16, in the run)
_CHUNK = 256  # inputs fetched at a time
_SOURCES = {"gallery": "error gallery", "audit": "cue audit"}


@dataclass(frozen=True, slots=True)
class CellExamples:
    """The highest-loss examples of every confusion cell, grouped by cell (true, then predicted class).

    Attributes:
        per_cell: at most this many per cell (``cell_examples``).
        indices: ``(M,)`` dataset positions; ``labels``, ``preds``: ``(M,)`` true and predicted classes.
        true_probability: ``(M,)`` the probability given to the true class; ``pred_probability``: to the predicted one.
        losses: ``(M,)`` cross-entropy of each example, largest first inside each cell.
        inputs: ``(M, C, H, W)`` the inputs, float32 on the CPU, as fetched for the gallery; None when they are
            not images (positions and numbers only) or cannot be fetched again (``note`` says why).
        wanted: examples the cells would hold without the cap (each cell ``min(count, per_cell)``).
        cap: the most examples kept over all cells: :data:`MAX_EXAMPLES`, fewer for large inputs.
        note: why no input was kept, or ``""``.
    """

    per_cell: int
    indices: np.ndarray
    labels: np.ndarray
    preds: np.ndarray
    true_probability: np.ndarray
    pred_probability: np.ndarray
    losses: np.ndarray
    inputs: np.ndarray | None
    wanted: int
    cap: int
    note: str = ""

    @property
    def capped(self) -> bool:
        """Whether the cap dropped examples (the cells hold fewer than ``min(count, per_cell)`` each)."""
        return len(self.indices) < self.wanted


class CellSelector:
    """A running top-``per_cell`` by loss for each (true, predicted) cell, updated one batch at a time."""

    def __init__(self, per_cell: int) -> None:
        self.per_cell = per_cell
        self.classes = 0
        self._cell = np.zeros(0, np.int64)  # true · classes + pred
        self._loss = np.zeros(0, np.float64)
        self._position = np.zeros(0, np.int64)

    def update(self, start: int, labels: np.ndarray, preds: np.ndarray, losses: np.ndarray, classes: int) -> None:
        """Add a batch whose first example is at dataset position ``start``; keep each cell's best."""
        if self.per_cell == 0 or len(labels) == 0:
            return
        self.classes = classes
        labels = np.clip(np.asarray(labels, np.int64), 0, classes - 1)  # out-of-range labels fail after the pass
        self._keep_best(labels * classes + np.asarray(preds, np.int64), losses, start + np.arange(len(labels)))

    def merge(self, other: CellSelector) -> None:
        """Add another shard's kept examples (the same ``per_cell``): the result is that of one pass over both."""
        self.classes = max(self.classes, other.classes)
        self._keep_best(other._cell, other._loss, other._position)

    def _keep_best(self, cells: np.ndarray, losses: np.ndarray, positions: np.ndarray) -> None:
        cell = np.concatenate([self._cell, cells])
        loss = np.concatenate([self._loss, np.asarray(losses, np.float64)])
        position = np.concatenate([self._position, positions])
        order = np.lexsort((position, -loss, cell))  # by cell, then highest loss, then earliest
        keep = order[_ranks(cell[order]) < self.per_cell]
        self._cell, self._loss, self._position = cell[keep], loss[keep], position[keep]

    def ranked(self) -> tuple[np.ndarray, np.ndarray]:
        """``(positions, ranks)`` of the kept examples, by cell and, inside one, highest loss first."""
        return self._position, _ranks(self._cell)


def _ranks(cells: np.ndarray) -> np.ndarray:
    """The rank of each entry inside its run of equal values in the sorted ``cells``."""
    if len(cells) == 0:
        return np.zeros(0, np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(cells)) + 1]
    return np.arange(len(cells)) - np.repeat(starts, np.diff(np.r_[starts, len(cells)]))


def cell_examples(
    selector: CellSelector,
    fetch: Callable[[list[int]], Tensor] | None,
    probabilities: np.ndarray,
    labels: np.ndarray,
    losses: np.ndarray,
) -> CellExamples:
    """Cap the selection and fetch its inputs (``fetch``: positions -> inputs; None: the data cannot be fetched).

    Under the cap every cell keeps its highest-loss example before any cell keeps its second (and so on), the
    off-diagonal cells (errors) before the diagonal ones at equal rank, then the fuller cells.
    """
    positions, ranks = selector.ranked()
    preds = probabilities.argmax(1)
    classes = probabilities.shape[1]
    cells = labels[positions] * classes + preds[positions]
    counts = np.bincount(labels * classes + preds, minlength=classes * classes)
    first = fetch([0]) if fetch is not None and len(positions) else None
    images = first is not None and first.ndim == 4
    cap = MAX_EXAMPLES
    if images:
        cap = max(1, min(cap, MAX_INPUT_BYTES // (4 * first[0].numel())))
    diagonal = labels[positions] == preds[positions]
    chosen = np.lexsort((cells, -counts[cells], diagonal, ranks))[:cap]
    chosen = chosen[np.lexsort((ranks[chosen], cells[chosen]))]  # back in cell order, highest loss first
    kept = positions[chosen]
    inputs, note = None, ""
    if fetch is None:
        note = "the data cannot be fetched by position (a shuffled or iterable DataLoader): no input kept"
    elif len(kept) and not images:
        note = f"the inputs are not images ({tuple(first.shape[1:])} per example): positions and numbers only"
    elif len(kept):
        inputs = np.empty((len(kept), *first.shape[1:]), np.float32)
        for at in range(0, len(kept), _CHUNK):
            inputs[at : at + _CHUNK] = fetch(kept[at : at + _CHUNK].tolist()).float().cpu().numpy()
    rows = probabilities[kept]
    true, pred = labels[kept], preds[kept]
    return CellExamples(
        selector.per_cell, kept, true, pred, rows[np.arange(len(kept)), true], rows[np.arange(len(kept)), pred],
        losses[kept], inputs, int(np.minimum(counts, selector.per_cell).sum()), cap, note,
    )  # fmt: skip


def cell_note(
    meta: dict[str, Any], names: list[str], counts: np.ndarray, true: int, pred: int, sources: list[str]
) -> tuple[str, int | None]:
    """The note under cell (``true``, ``pred``) of a recorded run, and how many examples the run kept for it.

    ``sources``: the ``source`` of each example shown, the cell's kept ones first. ``kept`` is None for a run
    recorded before the cells' examples were kept (then only the gallery's and the audit's are stored).
    """
    c = meta.get(f"{TAGS.EVALUATION}/cells")
    count, shown = int(counts[true, pred]), len(sources)
    if count == 0:
        return f"No {names[true]} example was predicted as {names[pred]}.", None if c is None else 0
    if c is None:
        return _gallery_note(meta, names, counts, true, pred, shown), None
    kept = sum((t, p) == (true, pred) for t, p in zip(c["labels"], c["preds"], strict=True))
    text = _all_shown(names, count, true, pred)
    if shown < count:
        parts = [f"the {kept} {'least confident' if true == pred else 'highest-loss'}"] if kept else []
        parts += [f"{n} more from the {_SOURCES.get(s, s)}" for s, n in Counter(sources[kept:]).items()]
        text = f"{count} example{'s' if count > 1 else ''} in this cell; showing {shown}"
        listed = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + (parts[-1] if parts else "")
        text += f" ({listed})." if parts else "."
        if kept < min(count, c["per_cell"]):
            text += (
                f" The run keeps at most {c['cap']} examples over all its cells (it would hold {c['wanted']}), so "
                f"this cell keeps {kept} of up to {c['per_cell']}."
            )
    if shown and not c["inputs"] and c.get("note"):
        text += f" No picture of the kept examples: {c['note']}."
    return text, kept


def _all_shown(names: list[str], count: int, true: int, pred: int) -> str:
    if count == 1:
        return f"The one {names[true]} example predicted as {names[pred]} is shown."
    return f"All {count} {names[true]} examples predicted as {names[pred]} are shown."


def _gallery_note(meta: dict[str, Any], names: list[str], counts: np.ndarray, true: int, pred: int, shown: int) -> str:
    """A run without the cells' examples: only the error gallery's and the cue audit's inputs are stored."""
    count, what, p = int(counts[true, pred]), f"{names[true]} example", TAGS.EVALUATION
    if shown >= count:
        return _all_shown(names, count, true, pred)
    g = meta.get(f"{p}/gallery") or {}
    kept, errors = len(g.get("indices", [])), int(counts.sum() - np.trace(counts))
    order = "most confident" if g.get("order") == "confidence" else "largest-loss"
    why = f"the error gallery keeps the {kept} {order} of the run's {errors} misclassified examples"
    if true == pred:
        why = "the evaluation stores no correctly classified input, apart from the cue audit's flagged examples"
    elif (meta.get(f"{p}/audit") or {}).get("flagged"):
        why += ", the cue audit up to 4 examples of each flagged class"
    head = f"{count} {what}{'s were' if count > 1 else ' was'} predicted as {names[pred]}"
    if shown == 0:
        return f"{head}; none was stored with its input ({why})."
    were = "was" if shown == 1 else "were"
    return f"{head}; {shown} of them {were} stored with the input and shown, the other {count - shown} not ({why})."
