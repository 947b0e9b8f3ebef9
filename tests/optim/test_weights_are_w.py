"""A single-pass method (S2-SAM, MSAM) built with model= holds w in the parameters whenever
anything outside the training step reads them: evaluation, state_dict, torch.save. The reference
is the same method without model=, whose parameters hold w + eps between steps and w in
``unperturbed()``: the trajectories are equal bit for bit, only what is held between steps moves."""

import io
import warnings

import pytest
import torch
import torch.nn.functional as F

import flatlab
from flatlab.errors import UsageError
from flatlab.optim import Phase
from tests.helpers.nets import batches, tiny_net, weights
from tests.helpers.steps import step_closure

SINGLE_PASS = ["s2sam", "msam"]


def pair(name):
    """The method knowing its model, and the reference that does not (same weights, same seed)."""
    hooked, reference = tiny_net(), tiny_net()
    opt = flatlab.create_optimizer(name, hooked, lr=0.1, momentum=0.9, seed=0)
    ref = flatlab.create_optimizer(name, list(reference.parameters()), lr=0.1, momentum=0.9, seed=0)
    return hooked, opt, reference, ref


def train_step(model, opt, x, y):
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def equal(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", SINGLE_PASS)
def test_between_steps_every_reader_sees_w(name):
    model, opt, reference, ref = pair(name)
    data = batches(4)
    for x, y in data:
        train_step(model, opt, x, y)
        train_step(reference, ref, x, y)
        assert opt.phase is Phase.PENDING and ref.is_perturbed
        with ref.unperturbed():
            w = weights(reference)
            model.eval(), reference.eval()
            with torch.no_grad():
                expected_out = reference(data[0][0])
            model.train(), reference.train()
        assert equal(weights(model), w)
        assert equal(list(model.state_dict().values())[:2], [w[0], w[1]])  # conv weight and bias
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        buffer.seek(0)
        saved = torch.load(buffer)
        assert equal([saved[n] for n, _ in model.named_parameters()], w)
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(data[0][0]), expected_out)
        model.train()
        statistics = [b.clone() for b in model.buffers()]
        with torch.no_grad():  # a train-mode forward without gradients is no training forward
            model(data[0][0])
        for b, kept in zip(model.buffers(), statistics):
            b.copy_(kept)
        assert opt.phase is Phase.PENDING and equal(weights(model), w)


@pytest.mark.parametrize("name", SINGLE_PASS)
def test_the_training_forward_runs_at_w_plus_eps_as_the_reference(name):
    model, opt, reference, ref = pair(name)
    for i, (x, y) in enumerate(batches(4)):
        out = model(x)
        assert opt.is_perturbed == (i > 0)  # the first step is a base step
        assert equal(weights(model), weights(reference))  # w + eps, bit for bit
        opt.zero_grad()
        F.cross_entropy(out, y).backward()
        opt.step()
        train_step(reference, ref, x, y)
    with ref.unperturbed():
        assert equal(weights(model), weights(reference))


@pytest.mark.parametrize("name", SINGLE_PASS)
def test_step_with_a_closure_applies_the_pending_perturbation(name):
    model, opt, reference, ref = pair(name)
    for x, y in batches(3):
        def closure(x=x, y=y):
            opt.zero_grad()
            loss = F.cross_entropy(model.forward(x), y)  # .forward: no hook; the step applies it
            loss.backward()
            return loss
        opt.step(closure)
        train_step(reference, ref, x, y)
    with ref.unperturbed():
        assert equal(weights(model), weights(reference))


@pytest.mark.parametrize("name", SINGLE_PASS)
def test_resume_from_a_checkpoint_between_steps_is_exact(name):
    data = batches(6)
    model, opt, _, _ = pair(name)
    for x, y in data[:3]:
        train_step(model, opt, x, y)
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, saved)
    for x, y in data[3:]:
        train_step(model, opt, x, y)

    saved.seek(0)
    state = torch.load(saved, weights_only=False)
    resumed = tiny_net(seed=7)
    resumed.load_state_dict(state["model"])
    opt2 = flatlab.create_optimizer(name, resumed, lr=0.1, momentum=0.9, seed=99)
    opt2.load_state_dict(state["optimizer"])
    for x, y in data[3:]:
        train_step(resumed, opt2, x, y)
    assert equal(weights(resumed), weights(model))


def test_without_model_a_closure_step_also_holds_w_between_steps():
    # the closure comes back each step, so the step itself can apply the perturbation first
    data = batches(3)
    model, opt, reference, ref = pair("s2sam")
    plain = flatlab.create_optimizer("s2sam", list(model.parameters()), lr=0.1, momentum=0.9, seed=0)
    del opt
    for x, y in data:
        plain.step(step_closure(plain, model, x, y))
        train_step(reference, ref, x, y)
        assert plain.phase is Phase.PENDING
        with ref.unperturbed():
            assert equal(weights(model), weights(reference))


@pytest.mark.parametrize("name", SINGLE_PASS)
def test_gradients_taken_at_w_are_refused(name):
    model, opt, _, _ = pair(name)
    x, y = batches(1)[0]
    train_step(model, opt, x, y)
    before = weights(model)
    opt.zero_grad()
    F.cross_entropy(model.forward(x), y).backward()  # bypasses the module's hooks: runs at w
    with pytest.raises(UsageError, match="taken at w, not at w \\+ eps"):
        opt.step()
    assert equal(weights(model), before)


def test_compiled_model_trains_as_the_eager_one():
    model, opt, reference, ref = pair("s2sam")
    compiled = torch.compile(model, backend="eager")
    for x, y in batches(4):
        train_step(compiled, opt, x, y)
        train_step(reference, ref, x, y)
        assert opt.phase is Phase.PENDING
    with ref.unperturbed():
        assert equal(weights(model), weights(reference))


def test_accumulated_micro_batches_of_a_plain_loop_count_in_full_without_warning():
    # each micro-batch's forward runs at w + eps (the first applies it), so the sum of their
    # gradients is the whole batch's gradient at w + eps
    whole, split = tiny_net(dtype=torch.float64), tiny_net(dtype=torch.float64)
    for model in (whole, split):
        model.bn.eval()  # running statistics: micro-batches then add up to the whole batch exactly
    opt_whole = flatlab.create_optimizer("s2sam", whole, lr=0.1, momentum=0.9)
    opt_split = flatlab.create_optimizer("s2sam", split, lr=0.1, momentum=0.9)
    for x, y in batches(3, batch=8, dtype=torch.float64):
        train_step(whole, opt_whole, x, y)
        opt_split.zero_grad()
        for i in (0, 4):
            (F.cross_entropy(split(x[i:i + 4]), y[i:i + 4]) / 2).backward()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            opt_split.step()
    for a, b in zip(whole.parameters(), split.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
