"""Every flatlab method under PyTorch Lightning (the `flatlab[lightning]` extra).

Lightning's automatic optimization hands the optimizer a closure that returns the mean loss, which
runs every method but ESAM's data selection (per-sample losses) and SSAM-F's mask refresh from data;
its `accumulate_grad_batches` runs the earlier micro-batches outside the step, where a two-pass
method cannot re-evaluate them at w + eps, so the step refuses it. `SharpnessAwareModule`
switches to manual optimization and steps the optimizer with `flatlab.micro_batches` over
`accumulate` batches (the step equals one step on their concatenation; ESAM ranks all of them).

Example:
    ```python
    class Model(SharpnessAwareModule):
        accumulate = 2                      # not Trainer(accumulate_grad_batches=...): see below

        def per_sample_loss(self, batch, idx):
            x, y = batch if idx is None else (batch[0][idx], batch[1][idx])
            return F.cross_entropy(self.net(x), y, reduction="none")

        def configure_optimizers(self):
            opt = flatlab.create_optimizer("esam", self.net, lr=0.1, momentum=0.9)
            return {"optimizer": opt, "lr_scheduler": CosineAnnealingLR(opt, T_max=100)}
    ```

Lightning refuses `Trainer(accumulate_grad_batches=k)` under manual optimization: set the
module's `accumulate` instead. Step-interval LR schedulers are stepped after each optimizer step
(respecting their `frequency`), epoch-interval ones at the end of each epoch. SSAM-F's mask
refreshes from the optimizer's `mask_data` when it has one, else from the current batches
(`SharpnessAwareModule.mask_batches`). `precision="16-mixed"` hands Lightning's GradScaler
to the step, which scales each of its backward passes.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import Tensor

from ..optim import SharpnessAware, micro_batches
from ._window import check_window_feeds_mask

__all__ = ["SharpnessAwareModule"]


class SharpnessAwareModule(L.LightningModule):
    """A LightningModule mixin that trains with any flatlab method; implement
    `per_sample_loss` (and `configure_optimizers`, returning a flatlab optimizer).
    """

    #: batches per optimizer step (gradient accumulation, exact: one step over their concatenation)
    accumulate: int = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False
        self._window: list[Any] = []

    def per_sample_loss(self, batch: Any, idx: Tensor | None) -> Tensor:
        """Per-sample losses (shape `[len(idx)]`) of the rows `idx` (None: all) of `batch`;
        no `backward`: the optimizer takes it.
        """
        raise NotImplementedError("SharpnessAwareModule needs per_sample_loss(batch, idx)")

    def mask_batches(self, batches: list[Any]) -> list[tuple[Tensor, Tensor]]:
        """The `(inputs, targets)` batches an SSAM-F mask refresh reads when the optimizer has no
        `mask_data`: by default the current batches, taken as `(inputs, targets)` pairs.
        """
        return [(b[0], b[1]) for b in batches]

    def on_train_start(self) -> None:
        """Refuses an SSAM-F mask that scores more samples than a window holds."""
        opt = self.optimizers().optimizer
        if isinstance(opt, SharpnessAware):
            size = getattr(self.trainer.train_dataloader, "batch_size", None)
            rows = None if size is None else size * self.accumulate
            check_window_feeds_mask(opt, rows, "the accumulation window (the loader's batch_size x accumulate rows)")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        """Collects `accumulate` batches, then takes one optimizer step over them."""
        self._window.append(batch)
        if len(self._window) < self.accumulate and not self.trainer.is_last_batch:
            return None
        window, self._window = self._window, []
        lightning_opt = self.optimizers()
        opt = lightning_opt.optimizer
        if not isinstance(opt, SharpnessAware):
            raise TypeError(f"configure_optimizers must return a flatlab optimizer, got {type(opt).__name__}")
        opt.prepare(lambda: self.mask_batches(window), model=opt.model or self)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        # LightningOptimizer.step would wrap the per-sample closure into a plain one; step the
        # flatlab optimizer directly and let Lightning count the step as its own step() does.
        # _on_before_step/_on_after_step are Lightning's internals (what LightningOptimizer.step
        # calls around the step); Lightning offers no public way to do this.
        lightning_opt._on_before_step()
        try:
            loss = opt.step(micro_batches(window, self.per_sample_loss), scaler=scaler)
        finally:
            lightning_opt._on_after_step()
        opt.zero_grad(set_to_none=True)
        self._step_schedulers("step")
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        """Steps the epoch-interval LR schedulers."""
        self._step_schedulers("epoch")

    def _step_schedulers(self, interval: str) -> None:
        count = self.trainer.global_step if interval == "step" else self.trainer.current_epoch + 1
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == interval and count % config.frequency == 0:
                if config.monitor is not None:
                    config.scheduler.step(self.trainer.callback_metrics[config.monitor])
                else:
                    config.scheduler.step()
