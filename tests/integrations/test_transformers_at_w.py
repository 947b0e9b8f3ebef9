"""Under SharpnessAwareTrainer a single-pass method's weights are w wherever the Trainer reads
them: checkpoints, evaluation, the best model loaded at the end and the exported model. The
expectation is a hand-written loop with the same method built without model= and read inside
``unperturbed()`` (its parameters hold w + eps between steps)."""

import pytest
import torch

import flatlab
from tests.helpers.language import tiny_gpt2, token_rows

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from safetensors.torch import load_file  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402
from transformers.optimization import get_linear_schedule_with_warmup  # noqa: E402

from flatlab.integrations.transformers import SharpnessAwareTrainer, per_example_loss  # noqa: E402

ROWS, STEPS = 4, 4


def reference_weights(method):
    """w after each step of a hand loop whose optimizer holds w + eps between steps."""
    model = tiny_gpt2(tie_word_embeddings=False)
    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": 0.01},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    opt = flatlab.create_optimizer(method, groups, base="adamw", lr=1e-2, max_grad_norm=1.0)
    schedule = get_linear_schedule_with_warmup(opt, 0, STEPS)
    data = token_rows(ROWS * STEPS, 1)
    out = []
    for step in range(STEPS):
        ids = torch.stack([r["input_ids"] for r in data[step * ROWS:(step + 1) * ROWS]])
        opt.zero_grad()
        per_example_loss(model(input_ids=ids).logits, ids, shift=True).mean().backward()
        opt.step()
        schedule.step()
        with opt.unperturbed():
            out.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert opt.is_perturbed  # the reference does hold w + eps between steps
    return out


@pytest.mark.parametrize("method", ["s2sam", "msam"])
def test_checkpoints_evaluation_best_model_and_export_hold_w(tmp_path, method):
    model = tiny_gpt2(tie_word_embeddings=False)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=ROWS, max_steps=STEPS, learning_rate=1e-2,
        weight_decay=0.01, optim="adamw_torch", lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
        train_sampling_strategy="sequential", use_cpu=True, report_to=[], logging_steps=1, disable_tqdm=True,
        seed=0, save_strategy="steps", save_steps=1, eval_strategy="steps", eval_steps=1,
        load_best_model_at_end=True, metric_for_best_model="eval_loss",
        greater_is_better=False,  # random eval tokens: the eval loss rises, the best is not the last step
    )
    trainer = SharpnessAwareTrainer(model=model, args=args, train_dataset=token_rows(ROWS * STEPS, 1),
                                    eval_dataset=token_rows(8, 5), method=method)
    trainer.train()
    expected = reference_weights(method)
    for step in range(1, STEPS + 1):
        saved = load_file(tmp_path / f"checkpoint-{step}" / "model.safetensors")
        for name, w in expected[step - 1].items():
            torch.testing.assert_close(saved[name], w, rtol=1e-5, atol=1e-6, msg=f"checkpoint-{step} {name}")

    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith(f"checkpoint-{STEPS}")
    best_weights = load_file(f"{best}/model.safetensors")
    for name, p in model.named_parameters():
        assert torch.equal(p, best_weights[name]), name
    logged = {e["step"]: e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e}
    assert trainer.evaluate()["eval_loss"] == logged[int(best.rsplit("-", 1)[1])]
    trainer.save_model(str(tmp_path / "export"))
    exported = load_file(tmp_path / "export" / "model.safetensors")
    assert all(torch.equal(exported[name], best_weights[name]) for name in best_weights)
