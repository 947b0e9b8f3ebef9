"""SharpnessAwareTrainer on wrapped models: a peft LoRA model of a causal LM trains with the causal
shift (its class, PeftModelForCausalLM, once hid it: the training loss fell, the eval loss rose), and
the shift is decided through torch.compile and DDP-style wrappers."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flatlab

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
peft = pytest.importorskip("peft")
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
)

from flatlab.integrations.transformers import SharpnessAwareTrainer, base_model, shifts_labels  # noqa: E402

VOCAB, LENGTH, ROWS = 100, 16, 8
# a random permutation of the vocabulary: each token is followed by its image, a bigram task LoRA learns
NEXT = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))


def gpt2_config(**changes):
    # initializer_range 0.2: the frozen (tied) embeddings must be large enough for the logits to move
    return GPT2Config(**{**dict(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=LENGTH,
                                initializer_range=0.2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0), **changes})


def lora_gpt2():
    torch.manual_seed(0)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], lora_dropout=0.0,
                             fan_in_fan_out=True)
    return peft.get_peft_model(GPT2LMHeadModel(gpt2_config()), config)


def chains(n, seed):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for start in torch.randint(0, VOCAB, (n,), generator=g).tolist():
        ids = [start]
        for _ in range(LENGTH - 1):
            ids.append(int(NEXT[ids[-1]]))
        ids = torch.tensor(ids)
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


def arguments(tmp_path, steps, lr):
    return TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=ROWS, per_device_eval_batch_size=64,
                             max_steps=steps, learning_rate=lr, weight_decay=0.0, optim="adamw_torch",
                             lr_scheduler_type="constant", max_grad_norm=0.0, train_sampling_strategy="sequential",
                             use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, seed=0)


class RecordingTrainer(SharpnessAwareTrainer):
    """Keeps the loss of each step (the exact value, not the rounded logged one)."""

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        self.losses.append(float(loss))
        return loss


def causal_losses(model, batch, idx):
    """A hand-written causal-LM loss: the logits at t against the label at t + 1, a mean per sequence."""
    ids = batch["input_ids"] if idx is None else batch["input_ids"][idx]
    logits = model(input_ids=ids).logits
    tokens = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1), reduction="none")
    return tokens.view(ids.shape[0], -1).mean(1)


def test_sam_on_a_lora_model_trains_the_adapters_with_the_causal_loss(tmp_path):
    steps, lr = 4, 1e-2
    model = lora_gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = RecordingTrainer(model=model, args=arguments(tmp_path, steps, lr), train_dataset=chains(steps * ROWS, 1),
                               method="sam", method_options={"rho": 0.05})
    trainer.losses = []
    trainer.train()

    # (i) the step perturbed and moved the adapters alone: every other tensor is unchanged bit for bit
    after = model.state_dict()
    lora = [k for k in after if "lora_" in k]
    assert lora and all(not torch.equal(after[k], before[k]) for k in lora)
    assert all(torch.equal(after[k], before[k]) for k in after if "lora_" not in k)

    # (ii) each step's loss is a hand-written causal-LM loop's, from the same start over the same batches
    hand = lora_gpt2()
    trainable = [p for p in hand.parameters() if p.requires_grad]
    opt = flatlab.create_optimizer("sam", trainable, base="adamw", lr=lr, weight_decay=0.0, rho=0.05)
    data = chains(steps * ROWS, 1)
    expected = []
    for i in range(steps):
        batch = {"input_ids": torch.stack([r["input_ids"] for r in data[i * ROWS:(i + 1) * ROWS]])}
        expected.append(float(opt.step(flatlab.micro_batches([batch], lambda b, idx: causal_losses(hand, b, idx)))))
    assert trainer.losses == pytest.approx(expected, rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), hand.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_eval_loss_falls_under_sam_as_under_adamw(tmp_path):
    """The peft model once trained without the shift: training loss fell, eval loss rose."""
    results = {}
    for method in ("sam", "adamw"):
        kwargs = dict(method="sam", method_options={"rho": 0.05}) if method == "sam" else {}
        cls = SharpnessAwareTrainer if method == "sam" else Trainer
        trainer = cls(model=lora_gpt2(), args=arguments(tmp_path / method, 40, 5e-2), train_dataset=chains(320, 1),
                      eval_dataset=chains(64, 2), **kwargs)
        start = trainer.evaluate()["eval_loss"]
        trainer.train()
        results[method] = (start, trainer.evaluate()["eval_loss"])
    (sam_start, sam_end), (adamw_start, adamw_end) = results["sam"], results["adamw"]
    assert sam_start == adamw_start
    assert adamw_end < adamw_start - 0.3  # the task is learnable by the adapters in 40 steps
    assert sam_end < sam_start - 0.3, results


class ModuleWrapper(nn.Module):
    """What DDP, FSDP (v1) and DeepSpeed look like from outside: the model as ``.module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


WRAPPINGS = {
    "peft": lambda: lora_gpt2(),
    # torch.compile with the eager backend (no C compiler needed), inside a DDP-like wrapper
    "DDP-like over compiled peft": lambda: ModuleWrapper(torch.compile(lora_gpt2(), backend="eager")),
}


@pytest.mark.parametrize("name", list(WRAPPINGS))
def test_the_causal_shift_is_seen_through_wrappers(name):
    model = WRAPPINGS[name]()
    ids = torch.stack([r["input_ids"] for r in chains(4, 3)])
    assert shifts_labels(model, {"input_ids": ids, "labels": ids}) is True
    assert isinstance(base_model(model), GPT2LMHeadModel)
    assert model.training  # the decision's eval-mode forward left the model as it was


def test_a_token_classifier_is_not_shifted():
    torch.manual_seed(0)
    model = ModuleWrapper(GPT2ForTokenClassification(gpt2_config(num_labels=5, pad_token_id=0)))
    ids = torch.stack([r["input_ids"] for r in chains(4, 3)])
    assert shifts_labels(model, {"input_ids": ids, "labels": ids % 5}) is False


def test_without_the_models_loss_the_class_inside_the_wrappers_decides(tmp_path):
    # a custom per-example loss: no batch decides, the model's class (GPT2LMHeadModel inside peft) does
    trainer = SharpnessAwareTrainer(model=lora_gpt2(), args=arguments(tmp_path, 1, 1e-2), method="sam",
                                    per_example_loss=lambda model, inputs: causal_losses(model, inputs, None))
    assert trainer._is_causal_lm()


class AuxiliaryLoss(ModuleWrapper):
    """A model whose loss adds a term (as a mixture of experts' router loss does)."""

    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        out["loss"] = out["loss"] + 0.5
        return out


def test_a_loss_matching_neither_clearly_leaves_the_decision_to_the_class():
    ids = torch.stack([r["input_ids"] for r in chains(4, 3)])
    assert shifts_labels(AuxiliaryLoss(lora_gpt2()), {"input_ids": ids, "labels": ids}) is None
    assert shifts_labels(lora_gpt2(), {"input_ids": ids}) is None  # no labels, no loss
