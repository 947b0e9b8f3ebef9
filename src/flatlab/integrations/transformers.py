"""Every flatlab method under the Hugging Face `Trainer` (the `flatlab[hf]` extra).

A sharpness-aware step re-runs the whole accumulated batch at w + eps, so it cannot be built from
the Trainer's one backward per micro-batch. `SharpnessAwareTrainer` keeps the micro-batches
of an accumulation window instead and, on the window's last one, takes one flatlab step over them
all (`flatlab.micro_batches`: the step equals one step on their concatenation, ESAM ranking the
whole window). The Trainer's own `optimizer.step()` that follows is then a no-op. Everything
else stays the Trainer's: its base optimizer and weight-decay groups, LR scheduler, bf16/fp16
autocast, logging and checkpoints (the optimizer's state_dict carries flatlab's own state, so a
resumed run equals a straight one).

Example:
    ```python
    from flatlab.integrations.transformers import SharpnessAwareTrainer

    trainer = SharpnessAwareTrainer(model=model, args=TrainingArguments(..., gradient_accumulation_steps=4),
                                    train_dataset=data, method="esam", method_options={"rho": 0.05})
    trainer.train()
    ```
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel, Trainer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..optim import SharpnessAware, create_optimizer, micro_batches
from ..optim.forwarding import Forwarding
from ..optim.registry import BASE_OPTIMIZERS, base_options
from ._window import check_window_feeds_mask

__all__ = ["SharpnessAwareTrainer", "per_example_loss", "rows_of", "shifts_labels", "base_model"]


def per_example_loss(logits: Tensor, labels: Tensor, *, shift: bool = False, problem_type: str | None = None) -> Tensor:
    """One loss per example (shape `[B]`) from a Hugging Face model's logits.

    - `logits [B, C]` (sequence classification): cross-entropy; `problem_type="regression"`:
      squared error (averaged over the outputs); `"multi_label_classification"`: binary
      cross-entropy averaged over the labels.
    - `logits [B, T, V]` (language modelling, token classification): the mean token loss of each
      sequence over the labels that are not -100; `shift=True` for a causal LM (token t predicts
      label t + 1, as the model's own loss does). The step then minimises the mean over sequences,
      which equals the model's token mean when every sequence has as many labelled tokens.
    """
    if logits.dim() == 3:
        if shift:
            logits, labels = logits[:, :-1], labels[:, 1:]
        tokens = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
        counted = (labels != -100).sum(1)
        return tokens.sum(1) / counted.clamp(min=1)
    if problem_type == "regression":
        out = logits.float().reshape(labels.shape[0], -1)
        return (out - labels.float().reshape(out.shape)).pow(2).mean(1)
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none").mean(1)
    return F.cross_entropy(logits.float(), labels, reduction="none")


def shifts_labels(model: nn.Module, batch: dict[str, Any]) -> bool | None:
    """Whether `model`'s own loss on `batch` is a causal LM's (logits at t scored against the
    label at t + 1): True or False when it clearly matches the shifted or the unshifted token mean
    of the same forward's logits; None when the model gives no loss or logits, or matches neither
    clearly (a loss with an added auxiliary term, ties of an untrained model).

    The model's own loss is the reference `per_example_loss` must agree with, and it is there
    whatever wraps the model (peft, `torch.compile`, DDP, FSDP, DeepSpeed) and whatever the model
    is (a vision-language model, remote code), where its class name would need a list that misses
    some. It costs one forward of one batch, without gradients and in eval mode: no dropout, so no
    random numbers are drawn and a resumed run still takes the steps of a straight one.
    """
    labels = batch.get("labels")
    if not isinstance(labels, Tensor) or labels.dim() != 2:
        return None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(**batch)
    finally:
        model.train(was_training)
    loss, logits = (out.get("loss"), out.get("logits")) if isinstance(out, dict) else (None, None)
    if loss is None or not isinstance(logits, Tensor) or logits.dim() != 3 or logits.shape[:2] != labels.shape:
        return None

    def gap(shift: bool) -> float:
        x, y = (logits[:, :-1], labels[:, 1:]) if shift else (logits, labels)
        mean = F.cross_entropy(x.float().transpose(1, 2), y, ignore_index=-100)  # the token mean, as models take it
        return abs(float(loss) - float(mean))

    shifted, plain = gap(True), gap(False)
    # "clearly": the model's loss equals the same logits' matching mean to rounding (a loss taken in
    # bf16 is off by ~1e-2), while the other one is off by tenths even untrained (0.2 for the tests'
    # random tiny GPT-2: a tied embedding predicts the current token) and by nats once trained
    if shifted * 10 < plain:
        return True
    if plain * 10 < shifted:
        return False
    return None


def base_model(model: nn.Module) -> nn.Module:
    """The `transformers` model inside wrappers: peft (`get_base_model()`), `torch.compile`
    (`_orig_mod`), DDP, FSDP, DeepSpeed and accelerate's wrappers (`module`).
    """
    while not isinstance(model, PreTrainedModel):
        if hasattr(model, "get_base_model"):
            inner = model.get_base_model()
        else:
            inner = getattr(model, "_orig_mod", None)
            inner = getattr(model, "module", None) if inner is None else inner
        if not isinstance(inner, nn.Module) or inner is model:
            break
        model = inner
    return model


def rows_of(inputs: dict[str, Any], idx: Tensor | None) -> dict[str, Any]:
    """The rows `idx` (None: all) of a batch of model inputs: every tensor whose first dimension
    is the batch's is indexed, anything else passed as it is.
    """
    if idx is None:
        return inputs
    size = _batch_size(inputs)
    return {k: v[idx] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == size else v
            for k, v in inputs.items()}


def _batch_size(inputs: dict[str, Any]) -> int:
    for key in ("input_ids", "labels", "inputs_embeds", "pixel_values"):
        if isinstance(inputs.get(key), Tensor):
            return inputs[key].shape[0]
    return next(v.shape[0] for v in inputs.values() if isinstance(v, Tensor) and v.dim() > 0)


class _WindowOptimizer(Forwarding):
    """What the Trainer (and accelerate) hold as the optimizer: the flatlab optimizer's
    param_groups, state and state_dict, but a `step()` that does nothing, the window's step
    having been taken in `training_step`.
    """

    def step(self, closure=None):
        return None


class SharpnessAwareTrainer(Trainer):
    """A `transformers.Trainer` whose optimizer is a flatlab method.

    Args (besides the Trainer's):
        method: a flatlab optimizer name (`flatlab.list_optimizers()`), or a function that takes
            the base optimizer the Trainer built (from `args.optim`, its learning rate and weight
            decay groups) and returns the flatlab optimizer, e.g.
            `lambda base: flatlab.SSAM(base, mask_data=..., model=model)`. A flatlab optimizer
            passed as `optimizers=(opt, scheduler)` is used as it is.
        method_options: keyword arguments of the named method (`rho`, `beta`, `seed`, ...).
            By name the base optimizer must be one flatlab knows (AdamW, Adam, SGD; the Trainer's
            default `adamw_torch` is); it is rebuilt with the Trainer's settings and groups.
        per_example_loss: `fn(model, inputs) -> losses [B]`; default: `per_example_losses`
            (the model's logits and `inputs["labels"]`, see `per_example_loss`).

    `args.max_grad_norm` becomes the optimizer's `max_grad_norm` (the descent gradient is
    clipped inside the step) unless the optimizer has its own. SSAM-F's Fisher mask refreshes from
    the optimizer's `mask_data` when it has one; otherwise from the current accumulation window,
    as `(input_ids, labels)` pairs (`num_samples` must then not exceed the window's rows).
    Under fp16 the step scales each of its backward passes with accelerate's GradScaler.
    The weights hold w whenever the Trainer reads them (evaluation, checkpoints, the best model,
    `save_model`): a single-pass method (S2-SAM, MSAM) applies its perturbation inside the step,
    and its checkpointed optimizer state carries the pending one, so resuming is exact.
    """

    def __init__(self, *args, method: str | Callable[[torch.optim.Optimizer], SharpnessAware] = "sam",
                 method_options: dict[str, Any] | None = None,
                 per_example_loss: Callable[[nn.Module, dict[str, Any]], Tensor] | None = None, **kwargs):
        self.method = method
        self.method_options = dict(method_options or {})
        self._per_example_loss = per_example_loss
        self._window: list[dict[str, Any]] = []
        self._scaler = None
        self._shift: bool | None = None  # whether labels are shifted (a causal LM); see _decide_shift
        self.sharpness_aware: SharpnessAware | None = None
        super().__init__(*args, **kwargs)
        if isinstance(self.optimizer, SharpnessAware):
            self._adopt(self.optimizer)

    # ---------------------------------------------------------------------------------------
    # the optimizer

    def create_optimizer(self, model=None):
        """The Trainer's base optimizer wrapped in the flatlab method."""
        if isinstance(self.optimizer, _WindowOptimizer):
            return self.optimizer
        if self.optimizer is None:
            base = super().create_optimizer(model)
            self.optimizer = None
            self._adopt(self._build(base, self.model if model is None else model))
        elif isinstance(self.optimizer, SharpnessAware):
            self._adopt(self.optimizer)
        else:
            raise TypeError(f"SharpnessAwareTrainer needs a flatlab optimizer, got {type(self.optimizer).__name__}")
        return self.optimizer

    def _build(self, base: torch.optim.Optimizer, model: nn.Module) -> SharpnessAware:
        if callable(self.method):
            opt = self.method(base)
            if not isinstance(opt, SharpnessAware):
                raise TypeError(f"method(base) must return a flatlab optimizer, got {type(opt).__name__}")
            return opt
        name = next((n for n, cls in BASE_OPTIMIZERS.items() if type(base) is cls), None)
        if name is None:
            raise ValueError(
                f"flatlab rebuilds only SGD, Adam and AdamW by name; the Trainer built {type(base).__name__} "
                f"(args.optim={self.args.optim!r}): pass method=lambda base: flatlab.{self.method.upper()}(base, ...)"
            )
        settings = {k: base.defaults[k] for k in base_options(name) if k in base.defaults}
        groups = [{k: v for k, v in g.items() if k in ("params", "weight_decay", "lr")} for g in base.param_groups]
        options = {"model": model, **self.method_options}
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            options.setdefault("max_grad_norm", float(self.args.max_grad_norm))
        return create_optimizer(self.method, groups, base=name, **settings, **options)

    def _adopt(self, opt: SharpnessAware) -> None:
        if opt.max_grad_norm is None and self.args.max_grad_norm and self.args.max_grad_norm > 0:
            opt.max_grad_norm = float(self.args.max_grad_norm)
        rows = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        check_window_feeds_mask(opt, rows, "the accumulation window (per_device_train_batch_size x "
                                "gradient_accumulation_steps rows)")
        self.sharpness_aware = opt
        self.optimizer = _WindowOptimizer(opt)

    # ---------------------------------------------------------------------------------------
    # the step

    def per_example_losses(self, model: nn.Module, inputs: dict[str, Any]) -> Tensor:
        """Per-example losses of a batch of inputs (override, or pass `per_example_loss=`)."""
        if self._per_example_loss is not None:
            return self._per_example_loss(model, inputs)
        if "labels" not in inputs:
            raise ValueError("the default per-example loss needs inputs['labels']; pass per_example_loss=")
        labels = inputs["labels"]
        out = model(**{k: v for k, v in inputs.items() if k != "labels"})
        return self._losses_of(out, labels)

    def _losses_of(self, out, labels: Tensor) -> Tensor:
        logits = out["logits"] if isinstance(out, dict) else out[0]
        problem = getattr(self._config(), "problem_type", None) or self._problem_type(labels)
        return per_example_loss(logits, labels, shift=self._is_causal_lm(), problem_type=problem)

    def _config(self):
        return getattr(self.accelerator.unwrap_model(self.model), "config", None)

    def _is_causal_lm(self) -> bool:
        if self._shift is None:  # no batch decided it (a custom per_example_loss): the model's class
            self._shift = type(base_model(self.model)).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
        return self._shift

    def _decide_shift(self, model: nn.Module, batch: dict[str, Any]) -> None:
        """Decides, once, from the model's own loss on the first batch (`shifts_labels`);
        the model's class decides where that loss cannot.
        """
        if self._shift is None and self._per_example_loss is None:
            self._shift = shifts_labels(model, batch)

    def _problem_type(self, labels: Tensor) -> str | None:
        config = self._config()
        if config is not None and getattr(config, "num_labels", None) == 1 and labels.dim() == 1:
            return "regression"  # as the models decide when problem_type is unset
        return None

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> Tensor:
        """Keeps the micro-batch; on the last one of the accumulation window, takes the flatlab
        step over the whole window and returns its loss (0 for the others, so the Trainer's
        logged loss, their sum, is the window's mean loss).
        """
        opt = self.sharpness_aware
        self._take_over_scaler()
        model.train()
        self._window.append(self._prepare_inputs(inputs))
        if not self.accelerator.sync_gradients:
            return torch.zeros((), device=self.args.device)
        window, self._window = self._window, []
        self._decide_shift(model, window[0])
        opt.prepare(lambda: [(b["input_ids"], b["labels"]) for b in window], self._fisher_loss, model=self.model)
        scale = self._scaler.get_scale() if self._scaler is not None else None
        with self.compute_loss_context_manager():
            loss = opt.step(micro_batches(window, lambda b, idx: self.per_example_losses(model, rows_of(b, idx)),
                                          sizes=[_batch_size(b) for b in window]), scaler=self._scaler)
        if scale is not None and hasattr(self.optimizer, "_is_overflow"):
            # the Trainer skips the LR scheduler's step after a skipped (overflowing) one; it reads
            # accelerate's AcceleratedOptimizer.step_was_skipped, a read-only view of its internal
            # _is_overflow, which only accelerate's own step sets: no public way to set it
            self.optimizer._is_overflow = self._scaler.get_scale() < scale
        opt.zero_grad(set_to_none=True)  # nothing left for the Trainer's clipping to touch
        return loss.detach().to(self.args.device)

    def _fisher_loss(self, out, labels: Tensor) -> Tensor:
        return self._losses_of(out, labels).sum()

    def _take_over_scaler(self) -> None:
        """Under fp16, accelerate's optimizer wrapper would call scaler.step/update after the
        window; the flatlab step does both itself (scaling each of its backward passes), so the
        scaler moves from the wrapper to this trainer.
        """
        if getattr(self.optimizer, "scaler", None) is not None:
            self._scaler = self.optimizer.scaler
            self.optimizer.scaler = None

    # ---------------------------------------------------------------------------------------
    # the best model

    def _load_best_model(self) -> None:
        # (Trainer's internal method, overridden: the one place that swaps in the best weights.)
        # A single-pass method's pending perturbation belongs to the last step's weights, not to
        # the best checkpoint's that replace them: drop it, so that nothing ever adds it to those.
        if self.sharpness_aware is not None:
            self.sharpness_aware.restore_weights()
        super()._load_best_model()
