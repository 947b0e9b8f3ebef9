"""benchmarks/gpu_check.py: its CPU dry run runs every part and passes its checks, and its checks
can fail."""

import json
import sys
from pathlib import Path

import pytest
import torch

import flatlab
from tests.helpers import scripts

ROOT = Path(__file__).resolve().parents[2]


def run_script(*args: str):
    return scripts.run_script("gpu_check", *args)


@pytest.fixture
def gpu_check(monkeypatch):
    return scripts.import_script(monkeypatch, "gpu_check")


def test_dry_run_runs_every_part_and_passes(tmp_path):
    done = run_script("--dry-run", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")
    assert result["mode"].startswith("dry-run")
    parts = result["parts"]
    assert set(parts) == {"amp", "memory", "syncs", "compile", "training"}
    assert not any("error" in part for part in parts.values())
    assert result["checks"] and all(c["passed"] for c in result["checks"]) and result["passed"]
    assert result["complete"] and result["parts_requested"] == ["amp", "memory", "syncs", "compile", "training"]
    assert parts["syncs"]["skipped"].startswith("CUDA only")

    training = {r["optimizer"]: r for r in parts["training"]["rows"]}
    assert list(training) == ["sgd", "sam", "esam", "aesam", "s2sam"]
    assert training["sgd"]["speed_vs_sgd"] == 1.0
    assert all(r["images_per_s"] > 0 and 0 <= r["test_top1"] <= 1 for r in training.values())
    assert training["esam"]["hyper_parameters"] == {"rho": 0.05, "beta": 0.6, "gamma": 0.5}

    amp = parts["amp"]
    precisions = {(r["optimizer"], r["precision"]) for r in amp["rows"]}
    assert {("sam", "bf16"), ("s2sam", "bf16")} <= precisions
    # this torch has a CPU GradScaler, so fp16 and the overflow run rather than being skipped
    if hasattr(torch.amp, "GradScaler") and not amp["skipped"]:
        assert {("sam", "fp16"), ("s2sam", "fp16"), ("sam", "fp16 overflow"), ("s2sam", "fp16 overflow")} <= precisions
    else:
        assert "fp16" in amp["skipped"]

    memory = {r["optimizer"]: r for r in parts["memory"]["rows"]}
    # between steps SAM keeps a backup of w, S2-SAM its pending perturbation: one copy each
    # SAM: the backup of w; S2-SAM: the backup and its pending directions (the gradient memory)
    assert memory["sam"]["own_state_copies"] == 1.0 and memory["s2sam"]["own_state_copies"] == 2.0
    assert memory["sam"]["held_above_sgd_copies"] == pytest.approx(1.0, abs=0.1)
    assert memory["s2sam"]["held_above_sgd_copies"] == pytest.approx(2.0, abs=0.1)

    compile_rows = {r["optimizer"]: r for r in parts["compile"]["rows"]}
    assert set(compile_rows) == {"sam", "s2sam"} and parts["compile"]["backend"] == "eager"
    assert all(r["relative_error"] <= 1e-6 and r["compiled_speed_vs_eager"] > 0 for r in compile_rows.values())
    # the eager backend runs the eager kernels: both fp32 runs equally far from float64
    assert all(r["compiled_error_vs_fp64"] == r["eager_error_vs_fp64"] > 0 for r in compile_rows.values())
    assert set(result["seconds"]) == set(parts)


def run_main(gpu_check, monkeypatch, *args: str) -> str:
    """The message main() exits with (it must exit before any work)."""
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", *args])
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main()
    return str(exit_.value.code)


def test_dry_run_refuses_to_write_over_the_committed_results(gpu_check, monkeypatch):
    committed = ROOT / "benchmarks" / "results"
    before = sorted(p.name for p in committed.iterdir())
    message = run_main(gpu_check, monkeypatch, "--dry-run", "--out", str(committed))
    assert message.startswith("error: the dry run does not write over") and "\n" not in message
    assert sorted(p.name for p in committed.iterdir()) == before


def test_missing_data_is_a_one_line_error(gpu_check, monkeypatch, tmp_path):
    message = run_main(gpu_check, monkeypatch, "--data-root", str(tmp_path / "nowhere"))
    assert message.startswith("error: no CIFAR-10 at") and "--data-root" in message and "\n" not in message


def test_unknown_part_is_a_one_line_error(gpu_check, monkeypatch, tmp_path):
    message = run_main(gpu_check, monkeypatch, "--dry-run", "--parts", "amp,speed", "--out", str(tmp_path))
    assert message == "error: unknown part(s) speed; choose among amp, memory, syncs, compile, training"


def test_data_root_finds_either_cifar_format(gpu_check, tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
    assert gpu_check.cifar_source(tmp_path) == ("cifar10", str(tmp_path))
    jpeg = tmp_path / "jpeg"
    jpeg.mkdir()
    (jpeg / "cifar10-jpeg.tar.gz").write_bytes(b"")
    assert gpu_check.cifar_source(jpeg) == ("imagefolder", str(jpeg / "cifar10-jpeg.tar.gz"))


class _NoAmpSupport(flatlab.SAM):
    # skips an overflowing step without restoring w from w + eps: the fault the optimizer's own
    # handling of the scaler exists to prevent
    def _descend(self, amp):
        if amp is not None and bool(amp.found_inf.item()):
            return
        super()._descend(amp)


def test_overflow_check_catches_a_step_left_at_w_plus_eps(gpu_check, monkeypatch):
    def broken(name, model):
        return _NoAmpSupport(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), rho=0.05, model=model)

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
    start = gpu_check.make_model(0.125, torch.device("cpu"))
    assert gpu_check.overflow_step(start, "sam", batches, torch.device("cpu"))["weights_unchanged"]
    monkeypatch.setattr(gpu_check, "make_optimizer", broken)
    overflow = gpu_check.overflow_step(start, "sam", batches, torch.device("cpu"))
    assert not overflow["weights_unchanged"] and overflow["scale_backed_off"]
    assert not overflow["next_step_trains"] and "first_step() called twice" in overflow["next_step_error"]


def test_amp_check_catches_a_step_skipped(gpu_check, monkeypatch):
    """A SAM step that never moves the weights is off the fp32 step by 1.0 (all of it)."""
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
    real = gpu_check.amp_step

    def skipping(model, opt, x, y, amp="none", scaler=None):
        if amp == "none" or not isinstance(opt, flatlab.SharpnessAware):
            return real(model, opt, x, y, amp, scaler)
        return None

    monkeypatch.setattr(gpu_check, "amp_step", skipping)
    kept = dict(scale_before=1.0, scale_after=0.5, backoff_factor=0.5, weights_unchanged=True,
                base_state_unchanged=True, scale_backed_off=True, next_step_trains=True, next_step_error=None)
    monkeypatch.setattr(gpu_check, "overflow_step", lambda *args: kept)  # tested above
    result = gpu_check.check_amp(batches, 0.125, torch.device("cpu"))
    checks = {c["check"]: c for c in result["checks"]}
    amp = "bf16" if result["skipped"] else "fp16"  # fp16's limit is the tighter one
    for name in ("sam", "s2sam"):
        c = checks[f"amp: {name} {amp} steps = fp32 steps"]
        assert c["value"] == pytest.approx(1.0) and not c["passed"]


def test_compile_check_catches_a_compiled_model_that_computes_otherwise(gpu_check):
    """A backend whose graph is off by 1% in its outputs (the size of the fault a compiled model
    that read stale weights would make) lands far outside eager's distance from float64."""

    def off_by_one_percent(gm, example_inputs):
        def run(*args):
            return [out * 1.01 if torch.is_tensor(out) and out.is_floating_point() else out for out in gm(*args)]
        return run

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]
    try:
        result = gpu_check.check_compile(batches, 0.125, torch.device("cpu"), off_by_one_percent, 1, 1)
    finally:
        torch._dynamo.reset()
    assert [c["passed"] for c in result["checks"]] == [False, False]
    assert all(r["compiled_error_vs_fp64"] > 10 * r["limit"] for r in result["rows"])


def test_methods_must_start_with_sgd_and_be_known(gpu_check, monkeypatch, tmp_path):
    for methods in ("sam,sgd", "sgd,esam-half"):
        message = run_main(gpu_check, monkeypatch, "--dry-run", "--methods", methods, "--out", str(tmp_path))
        assert message.startswith("error: --methods: sgd first, then any of sam, esam,") and methods in message
