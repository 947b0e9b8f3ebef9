"""Under Lightning a single-pass method's weights are w when validation reads them, in automatic
optimization and in SharpnessAwareModule; Lightning's own accumulation, which a sharpness-aware
step cannot follow, is refused in one error that names the way that works."""

import pytest
import torch
import torch.nn.functional as F

import flatlab
from flatlab.errors import UsageError
from tests.helpers.nets import mlp, vector_batches
from tests.helpers.steps import rows_of

L = pytest.importorskip("lightning")
from flatlab.integrations.lightning import SharpnessAwareModule  # noqa: E402

STEPS = 4


class Automatic(L.LightningModule):
    def __init__(self, name):
        super().__init__()
        self.net, self.name, self.seen = mlp(), name, []

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, _):
        self.seen.append([p.detach().clone() for p in self.net.parameters()])

    def configure_optimizers(self):
        return flatlab.create_optimizer(self.name, self.net, lr=0.1, momentum=0.9, seed=0)


class Manual(SharpnessAwareModule):
    def __init__(self, name):
        super().__init__()
        self.net, self.name, self.seen = mlp(), name, []

    def per_sample_loss(self, batch, idx):
        return rows_of(self.net, *batch, idx)

    def validation_step(self, batch, _):
        self.seen.append([p.detach().clone() for p in self.net.parameters()])

    def configure_optimizers(self):
        return flatlab.create_optimizer(self.name, self.net, lr=0.1, momentum=0.9, seed=0)


def fit(module, **options):
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **options)
    loader = torch.utils.data.DataLoader(vector_batches(STEPS, 8), batch_size=None)
    trainer.fit(module, loader, torch.utils.data.DataLoader(vector_batches(1, 8, seed=9), batch_size=None))
    return trainer


def reference(name):
    """w after each step of a plain loop whose optimizer holds w + eps between steps."""
    model = mlp()
    opt = flatlab.create_optimizer(name, list(model.parameters()), lr=0.1, momentum=0.9, seed=0)
    out = []
    for x, y in vector_batches(STEPS, 8):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        with opt.unperturbed():
            out.append([p.detach().clone() for p in model.parameters()])
    return out


@pytest.mark.parametrize("module", [Automatic, Manual])
@pytest.mark.parametrize("name", ["s2sam", "msam"])
def test_validation_reads_w(module, name):
    trained = module(name)
    fit(trained, val_check_interval=1)  # validation after every step
    expected = reference(name)
    assert len(trained.seen) == STEPS
    for step, (seen, w) in enumerate(zip(trained.seen, expected)):
        for a, b in zip(seen, w):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=f"step {step + 1}")


@pytest.mark.parametrize("name", ["sam", "wsam", "looksam"])
def test_lightning_accumulation_of_a_two_pass_method_is_refused(name):
    with pytest.raises(UsageError, match="SharpnessAwareModule"):
        fit(Automatic(name), accumulate_grad_batches=2)


@pytest.mark.parametrize("name", ["s2sam", "msam"])
def test_lightning_accumulation_of_a_single_pass_method_is_exact(name):
    # every micro-batch's forward runs at w + eps (the first one applies it), so the window's
    # gradients add up to the gradient of its concatenation at w + eps
    trained = Automatic(name)
    fit(trained, accumulate_grad_batches=2)
    model = mlp()
    opt = flatlab.create_optimizer(name, model, lr=0.1, momentum=0.9, seed=0)
    batches = vector_batches(STEPS, 8)
    for i in range(0, STEPS, 2):
        opt.zero_grad()
        for x, y in batches[i:i + 2]:
            (F.cross_entropy(model(x), y) / 2).backward()
        opt.step()
    for p, q in zip(trained.net.parameters(), model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
