"""Token attributions: deepscope.explain_text against captum's LayerIntegratedGradients, in one process.

Run: python bench/bench_text.py [--repeats 7] [--steps 32]

The MiniLM sentiment classifier of ``deepscope demo attention`` (all-MiniLM-L6-v2 with a head fitted on
``datasets.reviews``), 8 held-out reviews, Integrated Gradients on the word embeddings with
``steps`` Gauss-Legendre points and the padding-token baseline (special tokens kept), 2 CPU threads.
Variants, interleaved in a random order on each repeat: captum (the reference; the padded batch in
one call, as its documentation does it), captum again (the noise floor), and deepscope (each review on
its own real tokens). Ratios are captum's time over the variant's (above 1: faster than captum).
"""

from __future__ import annotations

import argparse

import torch

from _whole_calls import print_ratios, time_whole_calls
from deepscope.datasets import reviews
from deepscope.demos._sentiment import sentiment_classifier
from deepscope.text import explain_text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)
    from captum.attr import LayerIntegratedGradients

    model, tokenizer, _ = sentiment_classifier()
    texts, _ = reviews(8, split="test", seed=1)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    reference = torch.where(special, ids, torch.full_like(ids, tokenizer.pad_token_id))
    with torch.no_grad():
        target = model(**batch).logits.argmax(1)

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits

    captum = LayerIntegratedGradients(forward, model.bert.embeddings.word_embeddings)

    def run_captum() -> None:
        captum.attribute(
            ids, baselines=reference, target=target, additional_forward_args=(mask,), n_steps=args.steps,
            method="gausslegendre", internal_batch_size=args.steps * len(texts),
        )  # fmt: skip
        model.zero_grad(set_to_none=True)  # captum leaves weight gradients behind

    variants = {
        "captum LayerIntegratedGradients": run_captum,
        "captum again (noise floor)": run_captum,
        "deepscope explain_text": lambda: explain_text(
            model, batch, tokenizer=tokenizer, target=target.tolist(), n_steps=args.steps
        ),
    }
    totals = time_whole_calls(variants, args.repeats, warm_up=True)
    print(
        f"token attributions: all-MiniLM-L6-v2 + sentiment head, {len(texts)} reviews of up to {ids.shape[1]} tokens, "
        f"IG with {args.steps} points, {torch.get_num_threads()} threads, median of {args.repeats}; "
        "ratio = captum time / variant time"
    )
    print_ratios(totals, "captum LayerIntegratedGradients", len(texts), unit="texts")


if __name__ == "__main__":
    main()
