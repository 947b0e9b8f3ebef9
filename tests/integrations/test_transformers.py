"""SharpnessAwareTrainer: a few Trainer steps with gradient accumulation equal a hand-written
flatlab loop over the same micro-batches; checkpoints resume exactly; bf16 runs."""

import pytest
import torch

import flatlab
from tests.helpers.language import tiny_gpt2, token_rows

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import TrainingArguments  # noqa: E402
from transformers.optimization import get_linear_schedule_with_warmup  # noqa: E402

from flatlab.integrations.transformers import SharpnessAwareTrainer, per_example_loss  # noqa: E402

ROWS = 4


def arguments(tmp_path, steps, **overrides):
    options = dict(output_dir=str(tmp_path), per_device_train_batch_size=ROWS, gradient_accumulation_steps=2,
                   max_steps=steps, learning_rate=1e-2, weight_decay=0.01, optim="adamw_torch",
                   lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, train_sampling_strategy="sequential",
                   use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0)
    options.update(overrides)
    return TrainingArguments(**options)


def trainer_weights(tmp_path, method, options, steps=3, resume=None, **overrides):
    model = tiny_gpt2()
    trainer = SharpnessAwareTrainer(model=model, args=arguments(tmp_path, steps, **overrides),
                                    train_dataset=token_rows(24), method=method, method_options=options)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, model


def decay_groups(model, weight_decay):
    decay = set(transformers.Trainer.get_decay_parameter_names(None, model))
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]


def hand_loop(method, options, steps=3):
    model = tiny_gpt2()
    opt = flatlab.create_optimizer(method, decay_groups(model, 0.01), base="adamw", lr=1e-2, model=model,
                                   max_grad_norm=1.0, **options)
    schedule = get_linear_schedule_with_warmup(opt, 0, steps)
    data = token_rows(24)
    batches = [{k: torch.stack([row[k] for row in data[i:i + ROWS]]) for k in data[0]}
               for i in range(0, len(data), ROWS)]

    def losses(b, idx):
        b = b if idx is None else {k: v[idx] for k, v in b.items()}
        return per_example_loss(model(input_ids=b["input_ids"]).logits, b["labels"], shift=True)

    for step in range(steps):
        window = batches[2 * step:2 * step + 2]
        if opt.mask_due and not opt.coordinates.has_data_source:
            opt.update_mask(model, [(b["input_ids"], b["labels"]) for b in window],
                            lambda out, y: per_example_loss(out.logits, y, shift=True).sum())
        opt.step(flatlab.micro_batches(window, losses))
        schedule.step()
    return opt, model


METHODS = [
    ("sam", {"rho": 0.05}),
    ("esam", {"rho": 0.05, "beta": 0.6, "gamma": 0.5, "seed": 3}),
    ("ssam-f", {"sparsity": 0.5, "num_samples": 8, "update_interval": 2, "seed": 3}),
    ("s2sam", {"rho": 0.05}),
    ("looksam", {"k": 2}),
]


@pytest.mark.parametrize("method, options", METHODS, ids=[m for m, _ in METHODS])
def test_trainer_steps_equal_a_hand_written_loop(tmp_path, method, options):
    trainer, model = trainer_weights(tmp_path, method, options)
    opt, expected = hand_loop(method, options)
    assert trainer.state.global_step == 3
    assert trainer.sharpness_aware.steps == opt.steps == 3
    with trainer.sharpness_aware.unperturbed(), opt.unperturbed():
        for (name, p), q in zip(model.named_parameters(), expected.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    # the LR scheduler drove the groups flatlab steps with
    assert trainer.sharpness_aware.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_the_logged_loss_is_the_mean_loss_of_the_window(tmp_path):
    trainer, _ = trainer_weights(tmp_path, "sam", {"rho": 0.05}, steps=1)
    model = tiny_gpt2()
    data = token_rows(24)[:2 * ROWS]
    ids = torch.stack([row["input_ids"] for row in data])
    with torch.no_grad():
        expected = per_example_loss(model(input_ids=ids).logits, ids, shift=True).mean()
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert logged[0] == pytest.approx(float(expected), rel=1e-4)


@pytest.mark.parametrize("method, options", [("esam", {"seed": 3}), ("s2sam", {})])
def test_resuming_from_a_checkpoint_equals_a_straight_run(tmp_path, method, options):
    _, model = trainer_weights(tmp_path / "straight", method, options, steps=4, save_strategy="steps", save_steps=2)
    _, resumed = trainer_weights(tmp_path / "resumed", method, options, steps=4,
                                 resume=str(tmp_path / "straight" / "checkpoint-2"))
    for (name, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name


def test_bf16_autocast_runs_and_trains(tmp_path):
    trainer, model = trainer_weights(tmp_path, "esam", {"seed": 3}, steps=2, bf16=True)
    assert trainer.sharpness_aware.steps == 2
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(torch.tensor([e["loss"] for e in trainer.state.log_history if "loss" in e])).all()


def test_a_trainer_base_optimizer_flatlab_cannot_rebuild_asks_for_a_function(tmp_path):
    with pytest.raises(ValueError, match="method=lambda base"):
        trainer_weights(tmp_path, "sam", {}, steps=1, optim="adafactor")


def test_a_function_wraps_the_trainers_own_base_optimizer(tmp_path):
    trainer, _ = trainer_weights(tmp_path, lambda base: flatlab.SAM(base, rho=0.05), None, steps=1)
    assert isinstance(trainer.sharpness_aware.base, torch.optim.AdamW)
    assert trainer.sharpness_aware.max_grad_norm == 1.0  # args.max_grad_norm moved into the step
