"""benchmarks/text_lm.py: a tiny study runs end to end and resumes, the corpus is deterministic, and
the loss is the cross-entropy per token."""

import hashlib
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import flatlab
from tests.helpers import scripts

ROOT = Path(__file__).resolve().parents[2]


def run_script(*args: str):
    return scripts.run_script("text_lm", *args)


@pytest.fixture
def text_lm(monkeypatch):
    return scripts.import_script(monkeypatch, "text_lm")


TINY = ("--size", "tiny", "--methods", "adamw,sam", "--seeds", "0,1")


def test_tiny_study_runs_resumes_and_tabulates(tmp_path):
    first = run_script(*TINY, "--out", str(tmp_path))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "0 of 4 runs done; training 4" in first.stdout and "] epoch" in first.stdout
    runs = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*-seed*.json")}
    assert set(runs) == {"adamw-seed0", "adamw-seed1", "sam-seed0", "sam-seed1"}
    assert runs["sam-seed0"]["optimizer"] == "sam" and runs["sam-seed0"]["sam_steps_per_step"] == 1.0
    assert runs["adamw-seed0"]["sam_steps_per_step"] == 0.0
    assert all(math.isfinite(r["final_val_loss"]) and r["step_time_x_adamw"] > 0 for r in runs.values())
    summary = json.loads((tmp_path / "results.json").read_text())
    rows = {r["method"]: r for r in summary["rows"]}
    diffs = [runs[f"sam-seed{s}"]["final_val_loss"] - runs[f"adamw-seed{s}"]["final_val_loss"] for s in (0, 1)]
    assert rows["sam"]["vs_adamw_per_seed"] == pytest.approx(diffs, abs=1e-12)
    assert "vs_adamw_mean" not in rows["adamw"]
    table = (tmp_path / "results.md").read_text()
    assert "| adamw |" in table and "| sam |" in table and "(reference)" in table

    # a second invocation trains nothing and writes the same table
    stamps = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.glob("*-seed*.json")}
    again = run_script(*TINY, "--out", str(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 of 4 runs done; training 0" in again.stdout and "] epoch" not in again.stdout
    assert (tmp_path / "results.md").read_text() == table
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.glob("*-seed*.json")} == stamps

    # a run lost is trained again, to the same numbers (one thread on the CPU: deterministic)
    (tmp_path / "sam-seed1.json").unlink()
    resumed = run_script(*TINY, "--out", str(tmp_path))
    assert resumed.returncode == 0 and "3 of 4 runs done; training 1" in resumed.stdout
    retrained = json.loads((tmp_path / "sam-seed1.json").read_text())
    assert retrained["curve"] == runs["sam-seed1"]["curve"]

    # results of another setting are not mixed in
    other = run_script(*TINY, "--epochs", "3", "--out", str(tmp_path))
    assert other.returncode == 1
    message = other.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message
    assert "another setting ({'epochs': 2} there, {'epochs': 3} now)" in message


def test_tiny_size_does_not_write_into_the_committed_results(text_lm):
    with pytest.raises(SystemExit) as exit_:
        text_lm.main(["--size", "tiny"])
    assert str(exit_.value.code).startswith("error: the committed results")


def test_unknown_method_is_a_one_line_error(text_lm, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        text_lm.main(["--size", "tiny", "--methods", "adamw,lion", "--out", str(tmp_path)])
    assert exit_.value.code == "error: unknown method(s) lion; choose among adamw, sam, aesam, wsam, s2sam, rst"


def test_corpus_is_deterministic(text_lm):
    a, b = text_lm.load_corpus(), text_lm.load_corpus()
    assert a.sha256 == b.sha256 and a.files == b.files and len(a.files) > 50
    assert a.python == ".".join(map(str, sys.version_info[:3]))
    assert list(a.files) == sorted(a.files) and all(name.endswith(".py") for name in a.files)


def test_corpus_is_the_top_level_sources_in_name_order(text_lm, tmp_path):
    # written out of order, with a subfolder (site-packages lives in one) and a file of another kind
    for name, text in [("zeta.py", b"z = 1\n"), ("alpha.py", b"a = 2\n"), ("mid.py", b"m = 3\n")]:
        (tmp_path / name).write_bytes(text)
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "site-packages" / "extra.py").write_bytes(b"x = 0\n")
    (tmp_path / "notes.txt").write_bytes(b"not python\n")
    corpus = text_lm.load_corpus(tmp_path)
    assert corpus.files == ("alpha.py", "mid.py", "zeta.py")
    assert corpus.data == b"a = 2\nm = 3\nz = 1\n"
    assert corpus.sha256 == hashlib.sha256(b"a = 2\nm = 3\nz = 1\n").hexdigest()
    (tmp_path / "mid.py").write_bytes(b"m = 4\n")
    assert text_lm.load_corpus(tmp_path).sha256 != corpus.sha256


def test_empty_corpus_folder_is_an_error(text_lm, tmp_path):
    with pytest.raises(text_lm.UsageError, match="no .py files"):
        text_lm.load_corpus(tmp_path)


def test_windows_and_split(text_lm):
    x, y = text_lm.windows(b"abcdefghij", 3)
    assert x.tolist() == [[97, 98, 99], [100, 101, 102], [103, 104, 105]]
    assert y.tolist() == [[98, 99, 100], [101, 102, 103], [104, 105, 106]]
    corpus = text_lm.Corpus(bytes(range(100)), ("a.py",), "/", "3")
    s = replace(text_lm.SIZES["tiny"], train_bytes=30, val_bytes=21, seq_len=4, batch_size=2)
    (tx, _), (vx, vy) = text_lm.split(corpus, s)
    assert tx[0].tolist() == [0, 1, 2, 3] and len(tx) == 7  # (30 - 1) // 4
    assert vx[0].tolist() == [79, 80, 81, 82] and vy[-1].tolist()[-1] == 99  # the last 21 bytes
    with pytest.raises(text_lm.UsageError, match="exceed the corpus"):
        text_lm.split(corpus, replace(s, train_bytes=90))
    with pytest.raises(text_lm.UsageError, match="make no batch of 8"):
        text_lm.split(corpus, replace(s, batch_size=8))


def test_loss_per_token_is_the_cross_entropy(text_lm):
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]],
                           [[0.0, 0.0, 0.0], [1.0, -2.0, 0.0]]])  # fmt: skip
    targets = torch.tensor([[0, 1], [2, 1]])
    by_hand = [[math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in zip(rows, ts)]
               for rows, ts in zip(logits.tolist(), targets.tolist())]
    assert text_lm.token_losses(logits, targets).flatten().tolist() == pytest.approx(sum(by_hand, []), rel=1e-6)
    assert by_hand[1][0] == pytest.approx(math.log(3))  # uniform over 3 tokens
    means = [sum(r) / 2 for r in by_hand]
    assert text_lm.sequence_losses(logits, targets).tolist() == pytest.approx(means, rel=1e-6)


def test_model_is_causal(text_lm):
    torch.manual_seed(0)
    model = text_lm.ByteLM(seq_len=8, width=16, layers=2, heads=2)
    x = torch.randint(0, 256, (2, 8))
    changed = x.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 256
    out, out_changed = model(x), model(changed)
    assert out.shape == (2, 8, 256)
    assert torch.equal(out[:, :5], out_changed[:, :5]) and not torch.equal(out[:, 5:], out_changed[:, 5:])


def test_methods_wrap_adamw_without_decay_on_norms_and_biases(text_lm):
    s = text_lm.SIZES["tiny"]
    model = text_lm.ByteLM(s.seq_len, s.width, s.layers, s.heads)
    for method in text_lm.METHODS:
        opt = text_lm.make_optimizer(method, model, s, seed=0, total_steps=10, rho=None)
        base = opt.base if isinstance(opt, flatlab.SharpnessAware) else opt
        assert type(base) is torch.optim.AdamW, method
        decayed = {id(p) for g in base.param_groups if g["weight_decay"] > 0 for p in g["params"]}
        assert id(model.blocks[0].ln1.weight) not in decayed and id(model.blocks[0].qkv.bias) not in decayed
        assert id(model.blocks[0].qkv.weight) in decayed
    assert text_lm.make_optimizer("aesam", model, s, 0, 123, rho=0.1).rho == 0.1


def test_sequences_are_the_samples_of_data_selection(text_lm):
    """ESAM's sample selection takes the per-sequence losses and trains."""
    torch.manual_seed(0)
    model = text_lm.ByteLM(seq_len=8, width=16, layers=1, heads=2)
    opt = flatlab.create_optimizer("esam", model, base="adamw", lr=1e-3, rho=0.05, beta=1.0, gamma=0.5, seed=0)
    x = torch.randint(0, 256, (6, 8))
    losses = [float(text_lm.train_step(model, opt, x, x.roll(-1, 1))) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
