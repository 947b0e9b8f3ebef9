"""Host-device synchronisations per step, counted with a dispatch mode on the CPU: the calls that
force one (``.item()``, ``float(t)``, ``bool(t)``) all go through ``aten::_local_scalar_dense``."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import flatlab


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


# One per step: the finiteness check of the descent gradient. More where a policy needs it: a
# policy keeping state from the ascent gradient (FriendlySAM's and VaSSO's averages; SSAM-D's mask, on the steps
# it updates it) checks that gradient at once; AE-SAM reads its norm to decide, which doubles as the
# check of a plain step's gradient (one sync) and of the ascent gradient of a SAM step (two); RST
# draws its coin from the optimizer's CPU generator (a host read, never a wait on an accelerator).
@pytest.mark.parametrize(
    "name, options, per_step",
    [("sam", {}, 1), ("asam", {}, 1), ("esam", {}, 1), ("s2sam", {}, 1), ("msam", {}, 1), ("looksam", {}, 1),
     ("gsam", {}, 1), ("wsam", {}, 1), ("ssam-d", {}, 1), ("rst", {}, 2), ("fsam", {}, 2), ("gcsam", {}, 1),
     ("vasso", {}, 2), ("sam-on", {}, 1), ("rwp", {}, 1), ("bsam", {"num_data": 100}, 1),
     ("lookbehind-sam", {}, 2),  # each inner step's descent check; the adaptive alpha stays on the device
     ("aesam", {"c_start": 0.0, "c_end": 0.0}, None), ("ssam-d", {"update_interval": 5}, None)],
)
def test_host_syncs_per_step(name, options, per_step):
    torch.manual_seed(0)
    norm = [torch.nn.LayerNorm(8)] if name == "sam-on" else []  # what SAM-ON perturbs
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), *norm, torch.nn.Tanh(), torch.nn.Linear(8, 3))
    momentum = {} if name == "bsam" else {"momentum": 0.9}  # bSAM's own base keeps no SGD momentum
    opt = flatlab.create_optimizer(name, model, lr=0.1, max_grad_norm=1.0, **momentum, **options)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    if name == "esam":  # its selection counts rows on the host: use the tensor draw only
        opt.samples = flatlab.optim.AllSamples()

    def step():
        if opt.needs_closure:
            opt.step(flatlab.per_sample(lambda idx: F.cross_entropy(model(x if idx is None else x[idx]),
                                                                    y if idx is None else y[idx], reduction="none")))
        else:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

    for _ in range(3):
        step()
    sam_before = opt.sam_steps
    with SyncCounter() as counter:
        for _ in range(10):  # steps 3 to 12
            step()
    if name == "aesam":
        sam_steps = opt.sam_steps - sam_before
        assert 0 < sam_steps < 10  # both kinds of step were counted
        assert counter.count == 10 + sam_steps
    elif name == "ssam-d" and options:
        # steps 5 and 10 update the mask: the ascent gradient's check and the count of live entries
        assert counter.count == 10 + 2 * 2
    else:
        # plain steps of a switch take their one check too
        assert counter.count == per_step * 10
