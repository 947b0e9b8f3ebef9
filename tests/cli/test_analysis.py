"""The analysis subcommands end to end: two tiny trained runs, every command through ``flatlab.cli.main``,
numbers checked against independent computations where that is cheap."""

import json
import math
import shutil
import time

import pytest
import torch

import flatlab
from flatlab.cli import main
from flatlab.train import TrainConfig, evaluate, train
from flatlab.train.reports import open_run, output_dirs, select_batches


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    dirs = {}
    for optimizer in ("sgd", "sam"):
        config = TrainConfig(dataset="digits", model="cnn", width=0.5, epochs=2, optimizer=optimizer, out=str(out),
                             name=optimizer, threads=1)
        dirs[optimizer] = train(config, log=lambda *_: None).run_dir
    return dirs


def cli(*args):
    return main([str(a) for a in args] + ["--threads", "1"])


def succeeds(*args):
    """Runs a command that must exit 0; returns its wall-clock seconds, which bound the time_s of
    every record it writes."""
    start = time.perf_counter()
    assert cli(*args) == 0
    return time.perf_counter() - start


def result(path, wall):
    record = json.loads(path.read_text())
    assert record["flatlab"] == flatlab.__version__
    # time_s is the sum of the timed parts (none timed would read 0), all inside the command
    parts = record["time_s_parts"]
    assert parts and all(t > 0 for t in parts.values())
    assert record["time_s"] == pytest.approx(sum(parts.values()))
    assert record["time_s"] <= wall
    for name in record["figures"]:
        assert (path.parent / name).stat().st_size > 1000
    return record


def test_landscape_1d_two_runs_on_one_figure_centre_is_the_test_loss(runs, capsys):
    wall = succeeds("landscape", runs["sgd"], runs["sam"], "--grid", 5, "--span", 0.5, "--batches", 2,
                    "--batch-size", 64)
    printed = capsys.readouterr().out
    assert "loss(0)" in printed and "sgd" in printed and "sam" in printed
    assert (runs["sgd"] / "analysis" / "landscape_random_1d_compare.png").stat().st_size > 1000
    for name in ("sgd", "sam"):
        record = result(runs[name] / "analysis" / "landscape_random_1d.json", wall)
        assert set(record["time_s_parts"]) == {"directions", "surface"}
        res = record["results"]
        assert record["options"]["grid"] == 5 and record["data"]["samples"] == 128
        assert res["alphas"] == pytest.approx([-0.5, -0.25, 0.0, 0.25, 0.5])
        assert len(res["loss"]) == len(res["accuracy"]) == 5
        # independent: flatlab.train.evaluate on the same batches
        run = open_run(runs[name])
        expected = evaluate(run.model, select_batches(run, 2, 64), run.device)
        assert res["center_loss"] == pytest.approx(expected["test_loss"], rel=1e-5)
        assert res["center_accuracy"] == pytest.approx(expected["test_top1"])
        assert res["loss"][2] == res["center_loss"]
        assert res["max_loss"] >= res["center_loss"]


@pytest.mark.parametrize("directions", ["random", "gaussian", "adversarial"])
@pytest.mark.parametrize("dims", [1, 2])
def test_landscape_directions_and_dims(runs, tmp_path, directions, dims):
    wall = succeeds("landscape", runs["sam"], "--directions", directions, "--dims", dims, "--grid", 3, "--groups", 2,
                    "--batches", 1, "--log", "--out", tmp_path)
    record = result(tmp_path / f"landscape_{directions}_{dims}d.json", wall)
    res = record["results"]
    shape = (3,) if dims == 1 else (3, 3)
    assert torch.tensor(res["loss"]).shape == shape
    run = open_run(runs["sam"])
    expected = evaluate(run.model, select_batches(run, 1, 128), run.device)["test_loss"]
    assert res["center_loss"] == pytest.approx(expected, rel=1e-5)
    assert res["directions_averaged"] == (2 if directions == "gaussian" else 1)
    assert (tmp_path / f"landscape_{directions}_{dims}d.png").exists()


def test_hessian_eigenvalues_trace_and_density(runs, tmp_path, capsys):
    wall = succeeds("hessian", runs["sgd"], runs["sam"], "--k", 5, "--iters", 12, "--trace-samples", 4,
                    "--density", 1, "--density-iters", 8, "--batches", 1, "--out", tmp_path)
    assert "lambda1/lambda5" in capsys.readouterr().out
    assert (tmp_path / "hessian_density_compare.png").stat().st_size > 1000
    for name in ("sgd", "sam"):
        record = result(tmp_path / name / "hessian.json", wall)
        res = record["results"]
        evals = res["eigenvalues"]
        assert len(evals) == 5 and evals == sorted(evals, reverse=True)
        assert res["lambda1"] == evals[0] >= res["lambda5"] == evals[4]
        assert res["lambda1_over_lambda5"] == pytest.approx(evals[0] / evals[4])
        assert math.isfinite(res["trace"]) and len(res["trace_samples"]) == 4
        assert set(record["time_s_parts"]) == {"eigenvalues", "trace", "density"}
        # independent: the Rayleigh quotient of a random vector lies below lambda1 and the density
        # integrates to one
        run = open_run(runs[name])
        batch = select_batches(run, 1, 128)
        params = [p for p in run.model.parameters()]
        loss = torch.nn.functional.cross_entropy(run.model(batch[0][0]), batch[0][1])
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randn_like(p) for p in params]
        hv = torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v)), params)
        rayleigh = sum((a * b).sum() for a, b in zip(hv, v)) / sum((u * u).sum() for u in v)
        assert float(rayleigh) <= evals[0] * (1 + 1e-4)
        grid, density = torch.tensor(res["density"]["grid"]), torch.tensor(res["density"]["density"])
        assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=0.05)


def reference_gradstats(model, batches, rho, gamma, seed=0):
    """SSAM's relative gradient difference, ESAM's SDS statistics and linearity with plain torch
    (eval mode, mean cross-entropy, eps = rho g / ||g||), per batch."""
    params = list(model.parameters())
    w = [p.detach().clone() for p in params]

    def grad(x, y, at):
        with torch.no_grad():
            for p, v in zip(params, at):
                p.copy_(v)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        return loss.detach(), torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    def per_sample(x, y, at):
        with torch.no_grad():
            for p, v in zip(params, at):
                p.copy_(v)
            return torch.nn.functional.cross_entropy(model(x), y, reduction="none")

    generator = torch.Generator().manual_seed(seed)
    out = {k: [] for k in ("ratio", "linearity", "cos_plus", "cos_minus", "cos_rand", "cos_plus_minus",
                           "sharpness_plus", "sharpness_minus")}
    for x, y in batches:
        loss, g = grad(x, y, w)
        scale = rho / (g.norm() + 1e-12)
        sizes = [p.numel() for p in params]
        w_eps = [v + scale * t.view_as(v) for v, t in zip(w, g.split(sizes))]
        loss_eps, g_eps = grad(x, y, w_eps)
        out["ratio"].append((g_eps - g).abs() / (g.abs() + 1e-12))
        out["linearity"].append(abs(float(loss_eps - loss - scale * g @ g)))
        rise = per_sample(x, y, w_eps) - per_sample(x, y, w)
        k = min(max(round(gamma * len(y)), 1), len(y) - 1)
        order = torch.argsort(rise, descending=True, stable=True)
        plus, minus = order[:k], order[k:]
        rand = torch.randperm(len(y), generator=generator)[:k]
        g_plus, g_minus, g_rand = (grad(x[i], y[i], w_eps)[1] for i in (plus, minus, rand))
        out["cos_plus"].append(cos(g_plus, g_eps))
        out["cos_minus"].append(cos(g_minus, g_eps))
        out["cos_rand"].append(cos(g_rand, g_eps))
        out["cos_plus_minus"].append(cos(g_plus, g_minus))
        out["sharpness_plus"].append(float(rise[plus].mean()))
        out["sharpness_minus"].append(float(rise[minus].mean()))
    with torch.no_grad():
        for p, v in zip(params, w):
            p.copy_(v)
    return out


def test_gradstats(runs, capsys):
    wall = succeeds("gradstats", runs["sgd"], "--batches", 2, "--batch-size", 64, "--gamma", 0.25)
    assert "linearity" in capsys.readouterr().out
    record = result(runs["sgd"] / "analysis" / "gradstats.json", wall)
    res = record["results"]
    assert record["options"]["rho"] == 0.05 and record["options"]["gamma"] == 0.25
    run = open_run(runs["sgd"])
    n_params = sum(p.numel() for p in run.model.parameters())
    rg = res["relative_gradient"]
    assert sum(rg["histogram_counts"]) == 2 * n_params  # every coordinate of both batches is binned
    # independent: the same quantities recomputed with plain torch on the same model and batches
    ref = reference_gradstats(run.model, select_batches(run, 2, 64), rho=0.05, gamma=0.25)
    ratio = torch.cat(ref["ratio"])
    assert rg["fraction_log_ratio_below_0"] == pytest.approx(float((ratio < 1).float().mean()), abs=2 / ratio.numel())
    assert rg["median_log10_ratio"] == pytest.approx(float(ratio.log10().median()), abs=1e-3)
    for key in ("cos_plus", "cos_minus", "cos_rand", "cos_plus_minus", "sharpness_plus", "sharpness_minus"):
        if key.startswith("cos"):
            assert res["sds_per_batch"][key] == pytest.approx(ref[key], abs=1e-4), key
        assert res["sds_mean"][key] == pytest.approx(sum(ref[key]) / 2, rel=1e-3, abs=1e-5), key
    # B+ holds the samples whose loss rises most under the perturbation
    assert res["sds_mean"]["sharpness_plus"] >= res["sds_mean"]["sharpness_minus"]
    assert res["linearity_per_batch"] == pytest.approx(ref["linearity"], rel=1e-3)
    assert res["linearity_mean"] == pytest.approx(sum(ref["linearity"]) / 2, rel=1e-3)


def test_robustness_clean_equals_the_run_and_error_grows_with_severity(runs, capsys):
    wall = succeeds("robustness", runs["sgd"], runs["sam"], "--corruptions", "gaussian_noise,contrast,gaussian_blur",
                    "--severities", "1,3,5")
    out = capsys.readouterr().out
    assert "contrast" in out and "mean" in out
    assert (runs["sgd"] / "analysis" / "robustness_compare.png").exists()
    for name in ("sgd", "sam"):
        res = result(runs[name] / "analysis" / "robustness.json", wall)["results"]
        summary = json.loads((runs[name] / "summary.json").read_text())
        assert res["clean_accuracy"] == pytest.approx(summary["final_test_top1"], abs=1e-12)
        err = res["mean_error_by_severity"]
        assert err["1"] <= err["3"] + 0.02 and err["3"] <= err["5"] + 0.02 and err["1"] < err["5"]
        assert set(res["accuracy"]) == {"gaussian_noise", "contrast", "gaussian_blur"}
        assert res["mean_accuracy"] == pytest.approx(sum(res["mean_accuracy_by_corruption"].values()) / 3)


def test_robustness_on_a_budget_matches_evaluate_on_the_same_subset(runs, tmp_path):
    wall = succeeds("robustness", runs["sam"], "--corruptions", "jpeg", "--severities", 2, "--batches", 2,
                    "--batch-size", 50, "--seed", 3, "--out", tmp_path)
    res = result(tmp_path / "robustness.json", wall)["results"]
    run = open_run(runs["sam"])
    expected = evaluate(run.model, select_batches(run, 2, 50, seed=3), run.device)["test_top1"]
    assert res["clean_accuracy"] == pytest.approx(expected, abs=1e-12)


def test_a_checkpoint_file_and_an_unfinished_run(runs, tmp_path, capsys):
    assert cli("landscape", runs["sgd"] / "model.pt", "--grid", 3, "--batches", 1, "--out", tmp_path / "a") == 0
    assert (tmp_path / "a" / "landscape_random_1d.json").exists()
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["sgd"], unfinished, ignore=shutil.ignore_patterns("model.pt", "summary.json", "analysis"))
    capsys.readouterr()
    assert cli("hessian", unfinished, "--k", 1) == 2
    err = capsys.readouterr().err
    assert "unfinished" in err and "--resume" in err and "--checkpoint checkpoint.pt" in err
    assert cli("landscape", unfinished, "--checkpoint", "checkpoint.pt", "--grid", 3, "--batches", 1) == 0
    assert (unfinished / "analysis" / "landscape_random_1d.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["landscape", "{missing}"], "no such run directory"),
        (["hessian", "{empty}"], "not a flatlab run directory"),
        (["robustness", "{sgd}", "--severities", "0,6"], "severities must be integers in 1..5"),
        (["robustness", "{sgd}", "--corruptions", "fog,contrast"], "unknown corruption(s) fog"),
        (["landscape", "{sgd}", "--grid", "1"], "--grid must be an integer >= 2"),
        (["landscape", "{sgd}", "--span", "0"], "--span must be > 0"),
        (["hessian", "{sgd}", "--k", "0"], "--k must be an integer >= 1"),
        (["hessian", "{sgd}", "--k", "5", "--iters", "3"], "--iters must be an integer >= 5"),
        (["gradstats", "{sgd}", "--gamma", "1.5"], "--gamma must be in (0, 1)"),
        (["gradstats", "{sgd}", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
    ],
)
def test_readable_errors(runs, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "sgd": runs["sgd"]}
    assert cli(*[a.format(**paths) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"flatlab {args[0]}: error: ") and message in err
    assert "Traceback" not in err


def test_argparse_rejects_a_bad_budget(runs, capsys):
    with pytest.raises(SystemExit) as exc:
        cli("landscape", runs["sgd"], "--batches", "0")
    assert exc.value.code == 2
    assert "--batches" in capsys.readouterr().err


def test_output_dirs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "x" / "a"
    a.mkdir()
    b.mkdir(parents=True)
    assert output_dirs([a]) == ([a / "analysis"], a / "analysis")
    assert output_dirs([a, b]) == ([a / "analysis", b / "analysis"], a / "analysis")
    assert output_dirs([a], tmp_path / "o") == ([tmp_path / "o"], tmp_path / "o")
    assert output_dirs([a, b], tmp_path / "o") == ([tmp_path / "o" / "a", tmp_path / "o" / "a-2"], tmp_path / "o")


def test_progress_bar_draws_on_request(runs, capsys):
    assert cli("landscape", runs["sgd"], "--grid", 3, "--batches", 1, "--progress", "--out", runs["sgd"] / "p") == 0
    err = capsys.readouterr().err
    assert "sgd: landscape 1-D" in err and "3/3" in err


def test_flag_defaults_are_the_library_defaults():
    import inspect

    from flatlab.cli import build_parser
    from flatlab.cli.analysis import COMMANDS

    parser = build_parser()
    for command in COMMANDS:
        args = parser.parse_args([command.name, "RUN"])
        signature = inspect.signature(command.analyse).parameters
        for name in ("batches", "batch_size", "split", "seed", "out", *(f for f, _, _ in command.flags)):
            assert getattr(args, name) == signature[name].default, (command.name, name)
        assert args.device == inspect.signature(open_run).parameters["device"].default


def test_without_a_terminal_a_long_analysis_prints_plain_progress_lines(runs, capsys, monkeypatch):
    """A 6-minute ``flatlab hessian`` logged to a file printed nothing until its table: now a line
    every PLAIN_EVERY seconds (0 here: every step), and none with --no-progress."""
    monkeypatch.setattr("flatlab.cli.analysis.PLAIN_EVERY", 0)
    args = ["hessian", runs["sgd"], "--batches", 1, "--k", 1, "--iters", 4, "--trace-samples", 0, "--density", 0,
            "--out", runs["sgd"] / "plain"]
    assert cli(*args) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "Lanczos" in line]
    assert lines[0].startswith("sgd: Lanczos top-1: 1/4 (25%), ") and lines[-1].startswith("sgd: Lanczos top-1: 4/4")
    assert cli(*args, "--no-progress") == 0
    assert capsys.readouterr().err == ""
