"""flatlab optimizers under PyTorch Lightning's automatic optimization (optimizer.step(closure))."""

import pytest
import torch
import torch.nn.functional as F

import flatlab
from tests.helpers.nets import batches, tiny_net
from tests.helpers.steps import step_closure

L = pytest.importorskip("lightning")


class Module(L.LightningModule):
    def __init__(self, name):
        super().__init__()
        self.net = tiny_net()
        self.name = name

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return flatlab.create_optimizer(self.name, self.net, lr=0.1, momentum=0.9, seed=0)


def lightning_weights(name, data):
    module = Module(name)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=None))
    return module, [p.detach() for p in module.net.parameters()]


@pytest.mark.parametrize("name", ["sam", "asam", "s2sam"])
def test_automatic_optimization_equals_a_plain_loop(name):
    data = batches(3)
    module, trained = lightning_weights(name, data)
    model = tiny_net()
    opt = flatlab.create_optimizer(name, model, lr=0.1, momentum=0.9, seed=0)
    for x, y in data:
        opt.step(step_closure(opt, model, x, y))
    expected = list(model.parameters())
    if name == "s2sam":
        with opt.unperturbed(), module.trainer.optimizers[0].unperturbed():
            assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(trained, expected))
    else:
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(trained, expected))
