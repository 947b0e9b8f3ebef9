"""A two-layer GPT-2 and random token rows for the Hugging Face integration tests (the tests that
import this skip themselves where transformers is not installed)."""

from __future__ import annotations

import torch

VOCAB, LENGTH = 32, 8


def tiny_gpt2(**config):
    """GPT-2 with 2 layers of width 16 and no dropout; ``config`` adds GPT2Config options."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=VOCAB, n_positions=LENGTH,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **config))


def token_rows(n, seed=1):
    """``n`` rows of LENGTH random tokens, each its own causal-LM labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]
