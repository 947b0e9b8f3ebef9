"""Adapters for other training frameworks; each module imports its framework, an optional extra.

- `flatlab.integrations.transformers`: `SharpnessAwareTrainer`, a Hugging Face `Trainer`
  that runs every flatlab method (extra `flatlab[hf]`).
- `flatlab.integrations.lightning`: `SharpnessAwareModule`, a LightningModule mixin that
  runs every method, ESAM's data selection and SSAM-F's mask refresh included (extra
  `flatlab[lightning]`).

`import flatlab` imports none of them.
"""
