"""Lightning and Hugging Face callbacks: real trainers, steps aligned with theirs, models left untouched."""

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import TrainerCallback

from deepscope.integrations import huggingface, lightning
from deepscope.integrations._common import batch_size_of, eval_metrics
from deepscope.recorder import TAGS
from deepscope.store import RunReader


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


class _Classifier(pl.LightningModule):
    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        self.fail_at = fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise RuntimeError("boom")
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val/acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loaders():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    train = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=8)  # 6 batches per epoch
    val = DataLoader(TensorDataset(x[48:], y[48:]), batch_size=8)
    return train, val, (x[48:], y[48:])


def _trainer(callback, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        **kwargs,
    )


@pytest.mark.parametrize("accumulate", [1, 2])
def test_lightning_records_one_step_per_optimiser_step(tmp_path, accumulate):
    torch.manual_seed(0)
    module = _Classifier()
    train, val, probe = _loaders()
    callback = lightning.DeepscopeCallback(tmp_path, probe=probe, layers=["net.1"], every=2)
    trainer = _trainer(callback, accumulate_grad_batches=accumulate)
    trainer.fit(module, train, val)
    steps = 12 // accumulate
    assert trainer.global_step == steps
    with RunReader(tmp_path) as reader:
        assert reader.info.status == "finished"
        loss = reader.scalars(TAGS.LOSS)
        assert loss.steps.tolist() == list(range(1, steps + 1))
        assert np.isfinite(loss.values).all()
        assert reader.scalars(TAGS.LR).values.tolist() == [0.1] * steps
        assert reader.scalars(TAGS.SAMPLES_PER_S).steps.tolist() == list(range(1, steps + 1))
        assert reader.scalars("eval/loss").steps.tolist() == [steps // 2, steps]  # after each epoch
        assert reader.scalars("eval/acc").steps.tolist() == [steps // 2, steps]
        assert reader.tensor_steps(TAGS.HEALTH).tolist() == list(range(2, steps + 1, 2))
        assert reader.tensor_steps(TAGS.PROBE_PRED).tolist() == [0, *range(2, steps + 1, 2)]
        layers = reader.meta()[TAGS.HEALTH_LAYERS]
        grad_norm = reader.tensor(TAGS.HEALTH, 2)[5, layers.index("net.0")]
        assert np.isfinite(grad_norm) and grad_norm > 0
    assert _hooks(module) == 0
    assert all(p.requires_grad for p in module.parameters())


def test_lightning_failure_marks_the_run_failed_and_removes_every_hook(tmp_path):
    module = _Classifier(fail_at=3)
    train, val, _ = _loaders()
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(lightning.DeepscopeCallback(tmp_path, every=1)).fit(module, train, val)
    with RunReader(tmp_path) as reader:
        assert reader.info.status == "failed"
        assert reader.scalars(TAGS.LOSS).steps.tolist() == [1, 2, 3]
    assert _hooks(module) == 0


def _tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 50, (n, 8), generator=g)
        self.labels = (self.ids[:, 0] > 25).long()  # learnable from the first token

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.labels[i]}


def _hf_trainer(model, callback, tmp_path, **overrides):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        max_steps=6,
        learning_rate=1e-3,
        eval_strategy="steps",
        eval_steps=3,
        logging_steps=3,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **overrides,
    )
    return Trainer(
        model=model, args=args, train_dataset=_Tokens(64, 0), eval_dataset=_Tokens(16, 1), callbacks=[callback]
    )


def test_huggingface_trainer_steps_losses_and_evaluation(tmp_path):
    model = _tiny_bert()
    probe = _Tokens(12, 2)
    callback = huggingface.DeepscopeCallback(
        tmp_path / "run", probe=(probe.ids, probe.labels), layers=["bert.pooler"], every=2
    )
    trainer = _hf_trainer(model, callback, tmp_path)
    trainer.train()
    with RunReader(tmp_path / "run") as reader:
        assert reader.info.status == "finished"
        loss = reader.scalars(TAGS.LOSS)
        assert loss.steps.tolist() == list(range(1, trainer.state.global_step + 1)) == list(range(1, 7))
        logged = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
        assert logged[3] == pytest.approx(loss.values[:3].mean(), rel=1e-4)  # HF logs the mean of steps 1-3
        assert reader.scalars("eval/loss").steps.tolist() == [3, 6]
        eval_losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
        np.testing.assert_allclose(reader.scalars("eval/loss").values, eval_losses, rtol=1e-6)
        assert "eval/runtime" not in reader.scalar_tags()
        layers = reader.meta()[TAGS.HEALTH_LAYERS]
        table = reader.tensor(TAGS.HEALTH, 2)
        assert table[5, layers.index("classifier")] > 0  # gradients measured before the Trainer zeroes them
        assert reader.tensor_steps(TAGS.PROBE_PRED).tolist() == [0, 2, 4, 6]
        assert reader.tensor(TAGS.PROBE_OUTPUT, 6).shape == (12, 2)  # the output's .logits
    assert _hooks(model) == 0


def test_huggingface_failure_inside_the_context_closes_the_run(tmp_path):
    model = _tiny_bert()
    with pytest.raises(RuntimeError, match="stop"), huggingface.DeepscopeCallback(tmp_path / "run", every=1) as cb:
        trainer = _hf_trainer(model, cb, tmp_path)
        trainer.add_callback(_StopAt(2))
        trainer.train()
    with RunReader(tmp_path / "run") as reader:
        assert reader.info.status == "failed"
        assert reader.scalars(TAGS.LOSS).steps.tolist() == [1, 2]
    assert _hooks(model) == 0


class _StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("stop")


def test_helpers_find_batch_sizes_and_metrics():
    assert batch_size_of((torch.zeros(5, 2), torch.zeros(5))) == 5
    assert batch_size_of({"input_ids": torch.zeros(3, 8)}) == 3
    assert batch_size_of("text") is None
    metrics = {"val_loss": torch.tensor(0.5), "val/acc": 0.75, "train_loss": 1.0, "val_hist": torch.zeros(3)}
    assert eval_metrics(metrics, prefix="val") == {"loss": torch.tensor(0.5), "acc": 0.75}
