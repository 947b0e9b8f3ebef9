"""SSAM-F refreshing from the accumulation window with more num_samples than the window holds is
refused before the first step, in one line that names the fix (it used to fail at the first refresh)."""

import pytest
import torch
import torch.nn.functional as F

import flatlab
from flatlab.errors import UsageError


def test_the_hugging_face_trainer_refuses_at_construction(tmp_path):
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    from flatlab.integrations.transformers import SharpnessAwareTrainer

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16,
                                                                 n_positions=4))
    ids = torch.randint(0, 16, (8, 4))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                                          gradient_accumulation_steps=2, max_steps=1, use_cpu=True, report_to=[],
                                          save_strategy="no", disable_tqdm=True)
    trainer = SharpnessAwareTrainer(model=model, args=args, method="ssam-f",
                                    train_dataset=[{"input_ids": r, "labels": r} for r in ids])
    with pytest.raises(UsageError, match=r"num_samples=128 .* holds 8: pass num_samples=8"):
        trainer.create_optimizer()
    trainer = SharpnessAwareTrainer(model=model, args=args, method="ssam-f", method_options={"num_samples": 8},
                                    train_dataset=[{"input_ids": r, "labels": r} for r in ids])
    trainer.train()
    assert trainer.sharpness_aware.steps == 1


def test_the_lightning_module_refuses_before_the_first_step():
    L = pytest.importorskip("lightning")
    from flatlab.integrations.lightning import SharpnessAwareModule

    class Module(SharpnessAwareModule):
        accumulate = 2

        def __init__(self, **options):
            super().__init__()
            self.net, self.options = torch.nn.Linear(3, 2), options

        def per_sample_loss(self, batch, idx):
            x, y = batch if idx is None else (batch[0][idx], batch[1][idx])
            return F.cross_entropy(self.net(x), y, reduction="none")

        def configure_optimizers(self):
            return flatlab.create_optimizer("ssam-f", self.net, lr=0.1, **self.options)

    data = torch.utils.data.TensorDataset(torch.randn(32, 3), torch.randint(0, 2, (32,)))

    def fit(module):
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
        return trainer

    module = Module()
    with pytest.raises(UsageError, match=r"num_samples=128 .* holds 16: pass num_samples=16"):
        fit(module)
    assert module.optimizers().optimizer.steps == 0
    assert fit(Module(num_samples=16)).optimizers[0].steps == 2
