"""SharpnessAwareModule: every method under Lightning (manual optimization), with accumulation and
a cosine scheduler, equals a hand-written flatlab loop over the same batches."""

import pytest
import torch

import flatlab
from tests.helpers.nets import mlp, vector_batches
from tests.helpers.steps import rows_of

L = pytest.importorskip("lightning")
from flatlab.integrations.lightning import SharpnessAwareModule  # noqa: E402

METHODS = [
    ("sam", {}), ("esam", {"beta": 0.6, "gamma": 0.5}), ("ssam-f", {"num_samples": 16, "update_interval": 2}),
    ("ssam-d", {"update_interval": 2}), ("s2sam", {}), ("looksam", {"k": 2}), ("gsam", {}),
]
STEPS = 3


def build(name, options, model):
    opt = flatlab.create_optimizer(name, model, lr=0.1, momentum=0.9, seed=3, **options)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)


class Module(SharpnessAwareModule):
    accumulate = 2

    def __init__(self, name, options):
        super().__init__()
        self.net = mlp()
        self.name, self.options = name, options

    def forward(self, x):
        return self.net(x)

    def per_sample_loss(self, batch, idx):
        return rows_of(self.net, *batch, idx)

    def configure_optimizers(self):
        opt, schedule = build(self.name, self.options, self.net)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def fit(module, batches, **options):
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **options)
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    return trainer


@pytest.mark.parametrize("name, options", METHODS, ids=[m for m, _ in METHODS])
def test_every_method_with_accumulation_equals_a_hand_written_loop(name, options):
    batches = vector_batches(2 * STEPS, 8)
    module = Module(name, options)
    trainer = fit(module, batches)
    assert trainer.global_step == STEPS

    model = mlp()
    opt, schedule = build(name, options, model)
    for step in range(STEPS):
        window = batches[2 * step:2 * step + 2]
        if opt.mask_due:
            opt.update_mask(model, window)
        opt.step(flatlab.micro_batches(window, lambda b, idx: rows_of(model, *b, idx)))
        schedule.step()
    trained = trainer.optimizers[0]
    assert trained.steps == opt.steps == STEPS
    assert trained.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    with trained.unperturbed(), opt.unperturbed():
        for p, q in zip(module.net.parameters(), model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_the_last_short_window_of_an_epoch_is_stepped():
    module = Module("esam", {})
    trainer = fit(module, vector_batches(5, 8))  # windows of 2, 2, 1
    assert trainer.global_step == 3 and trainer.optimizers[0].steps == 3


def test_lightning_refuses_its_own_accumulation_under_manual_optimization():
    with pytest.raises(Exception, match="accumulate"):
        fit(Module("sam", {}), vector_batches(2, 8), accumulate_grad_batches=2)
