"""ESAM (or any flatlab method) under the Hugging Face Trainer on a tiny random GPT-2: no download,
a few seconds on a CPU.

    python examples/transformers_sam.py [method]      # default: esam; e.g. sam, ssam-f, s2sam
"""

import sys
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from flatlab.integrations.transformers import SharpnessAwareTrainer

method = sys.argv[1] if len(sys.argv) > 1 else "esam"
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16))
# a toy language: each sequence counts up from a random start, so the model can learn it
starts = torch.randint(0, 64, (256, 1))
ids = (starts + torch.arange(16)) % 64
data = [{"input_ids": row, "labels": row.clone()} for row in ids]
options = {"rho": 0.05, "seed": 0}
if method == "ssam-f":
    options.update(num_samples=16, update_interval=10)  # the mask refreshes from the accumulated batch

with tempfile.TemporaryDirectory() as out:
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=8, gradient_accumulation_steps=2,
                             max_steps=40, learning_rate=3e-3, lr_scheduler_type="cosine", warmup_steps=4,
                             logging_steps=10, use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True)
    trainer = SharpnessAwareTrainer(model=model, args=args, train_dataset=data, method=method,
                                    method_options=options)
    result = trainer.train()
print(f"{method}: {trainer.sharpness_aware.steps} steps, final training loss {result.training_loss:.3f}")
