import json
import math

import pytest
import torch

from flatlab.cli import main
from flatlab.train import TrainingDiverged, compare_runs, resume, train
from flatlab.train.checkpoint import load_checkpoint, save_checkpoint

METRICS = ("train_loss", "train_acc", "test_loss", "test_top1", "test_top5", "lr")


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def same_metrics(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert {k: x[k] for k in METRICS} == {k: y[k] for k in METRICS}


def interrupt_at(monkeypatch, step):
    """Makes training raise KeyboardInterrupt (Ctrl-C) right after optimizer step ``step``."""
    from flatlab.train import run as run_module

    original = run_module._Run.after_step
    calls = {"n": 0}

    def interrupted(self):
        original(self)
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_module._Run, "after_step", interrupted)
    return lambda: monkeypatch.setattr(run_module._Run, "after_step", original)


@pytest.mark.parametrize("optimizer", ["sgd", "sam", "esam", "ssam-f", "ssam-d", "s2sam"])
def test_two_epochs_equal_one_then_resume_then_one(quick, monkeypatch, optimizer):
    extra = {"mask_interval": 3, "fisher_samples": 32} if optimizer.startswith("ssam") else {}
    straight = train(quick(optimizer=optimizer, name="straight", **extra), log=lambda *_: None)
    restore = interrupt_at(monkeypatch, 12)  # 11 steps per epoch: stops in the first step of epoch 2
    with pytest.raises(KeyboardInterrupt):
        train(quick(optimizer=optimizer, name="split", **extra), log=lambda *_: None)
    restore()
    resumed = resume(straight.run_dir.parent / "split", log=lambda *_: None)
    same_metrics(metrics(straight.run_dir), metrics(resumed.run_dir))
    a = torch.load(straight.run_dir / "model.pt")["model"]
    b = torch.load(resumed.run_dir / "model.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_run_resumes_exactly(quick, monkeypatch):
    straight = train(quick(optimizer="sam", epochs=3, name="straight"), log=lambda *_: None)
    restore = interrupt_at(monkeypatch, 17)  # in the middle of epoch 2
    with pytest.raises(KeyboardInterrupt):
        train(quick(optimizer="sam", epochs=3, name="interrupted"), log=lambda *_: None)
    restore()
    run_dir = straight.run_dir.parent / "interrupted"
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1
    assert len(metrics(run_dir)) == 1
    assert not list(run_dir.glob(".*.tmp"))
    resume(run_dir, log=lambda *_: None)
    same_metrics(metrics(straight.run_dir), metrics(run_dir))


def test_same_config_and_seed_give_same_metrics(quick):
    a = train(quick(optimizer="asam", name="a"), log=lambda *_: None)
    b = train(quick(optimizer="asam", name="b"), log=lambda *_: None)
    same_metrics(metrics(a.run_dir), metrics(b.run_dir))
    c = train(quick(optimizer="asam", name="c", seed=1), log=lambda *_: None)
    assert metrics(c.run_dir)[-1]["train_loss"] != metrics(a.run_dir)[-1]["train_loss"]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(quick, monkeypatch):
    from flatlab.train import loop

    original = loop.StepRunner.__call__
    calls = {"n": 0}

    def poisoned(self, x, y):
        calls["n"] += 1
        loss, hits = original(self, x, y)
        return (loss * math.nan if calls["n"] > 13 else loss), hits

    monkeypatch.setattr(loop.StepRunner, "__call__", poisoned)
    with pytest.raises(TrainingDiverged, match="last good checkpoint is epoch 1"):
        train(quick(epochs=3, name="nan"), log=lambda *_: None)
    run_dir = quick().out + "/nan"
    assert load_checkpoint(f"{run_dir}/checkpoint.pt")["epoch"] == 1


def test_existing_run_directory_is_not_overwritten(quick):
    train(quick(epochs=1, name="x"), log=lambda *_: None)
    with pytest.raises(FileExistsError, match="--resume"):
        train(quick(epochs=1, name="x"), log=lambda *_: None)
    train(quick(epochs=1, name="x"), overwrite=True, log=lambda *_: None)


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"a": torch.ones(3)})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("crash in the middle of writing")

    with pytest.raises(RuntimeError, match="crash"):
        save_checkpoint(path, {"a": torch.zeros(10**6), "b": Unpicklable()})
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(path)


def test_compare_groups_seeds_and_reports_mean_and_std(quick):
    dirs = [train(quick(epochs=1, optimizer=o, seed=s), log=lambda *_: None).run_dir
            for o in ("sgd", "sam") for s in (0, 1)]
    rows = compare_runs(dirs)
    assert [r["label"] for r in rows] == ["optimizer=sgd", "optimizer=sam"]
    for row, pair in zip(rows, (dirs[:2], dirs[2:])):
        accs = [json.loads((d / "summary.json").read_text())["final_test_top1"] for d in pair]
        assert row["test_top1_mean"] == pytest.approx(sum(accs) / 2)
        assert row["test_top1_std"] == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
    assert rows[0]["speed_vs_sgd"] == 1.0


def test_cli_train_seeds_and_compare(tmp_path, capsys):
    out = str(tmp_path / "r")
    code = main(["train", "--epochs", "1", "--width", "0.5", "--optimizer", "s2sam", "--seeds", "0,1", "--out", out])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| s2sam | 2 |" in printed
    plot = tmp_path / "curves.png"
    assert main(["compare", *map(str, sorted((tmp_path / "r").iterdir())), "--plot", str(plot)]) == 0
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--optimizer", "nosuch"], "unknown optimizer 'nosuch'"),
        (["--model", "nosuch"], "nosuch"),
        (["--dataset", "nosuch"], "unknown dataset 'nosuch'"),
        (["--lr", "-1"], "lr must be > 0"),
        (["--dataset", "cifar10", "--data-root", "/nonexistent/cifar"], "cifar-10-batches-py"),
        (["--rho", "-0.5"], "rho=-0.5"),
    ],
)
def test_cli_errors_are_readable(tmp_path, capsys, argv, message):
    code = main(["train", "--epochs", "1", "--out", str(tmp_path), *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_corrupt_data_file_gives_a_readable_error(tmp_path, capsys):
    root = tmp_path / "fashion"
    root.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (root / name).write_bytes(b"\x00\x00\x08\x03garbage")
    code = main(["train", "--dataset", "fashion-mnist", "--data-root", str(root), "--out", str(tmp_path)])
    assert code == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err


def test_streaming_image_folder_trains(tmp_path):
    """The ImageNet path (--stream): decode per batch with a DataLoader, 224-pixel crops."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label in ("ant", "bee"):
            folder = tmp_path / "folder" / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                pixels = torch.randint(0, 256, (40, 48, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    code = main(["train", "--dataset", "imagefolder", "--data-root", str(tmp_path / "folder"), "--stream",
                 "--workers", "0", "--model", "cnn", "--batch-size", "4", "--epochs", "1",
                 "--optimizer", "s2sam", "--out", str(tmp_path / "runs"), "--name", "stream"])
    assert code == 0
    summary = json.loads((tmp_path / "runs" / "stream" / "summary.json").read_text())
    row = metrics(tmp_path / "runs" / "stream")[0]
    # the rate is the epoch's 8 training images (2 classes x 4) over its training time, inside the run's
    assert row["images_per_s"] * row["train_time_s"] == pytest.approx(8)
    assert 0 < row["train_time_s"] <= row["wall_time_s"]
    # independent: the saved weights, evaluated by a plain loop on the val/ images (the test split)
    from flatlab.data import ImageFolderDataset
    from flatlab.models import create_model

    model = create_model("cnn", num_classes=2, in_channels=3)
    model.load_state_dict(torch.load(tmp_path / "runs" / "stream" / "model.pt")["model"])
    model.eval()
    test = ImageFolderDataset(tmp_path / "folder" / "val", train=False)
    assert test.classes == ["ant", "bee"] and len(test) == 8
    x = torch.stack([test[i][0] for i in range(len(test))]).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    y = torch.tensor([test[i][1] for i in range(len(test))])
    with torch.no_grad():
        logits = model(x)
    assert summary["final_test_top1"] == pytest.approx(float((logits.argmax(1) == y).float().mean()), abs=1e-12)
    assert summary["final_test_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-4)


@pytest.mark.parametrize("optimizer", ["s2sam", "msam"])
def test_a_single_pass_run_checkpoints_w_and_its_pending_perturbation(quick, optimizer):
    # the checkpoint between steps holds w in the model (what the finished run exported as
    # model.pt) and the perturbation still to apply in the optimizer's state; load_trained gives w
    from flatlab.train import load_trained

    run_dir = train(quick(optimizer=optimizer, epochs=1), log=lambda *_: None).run_dir
    exported = torch.load(run_dir / "model.pt")["model"]
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    for k, v in checkpoint["model"].items():
        assert torch.equal(v, exported[k]), k
    own = checkpoint["optimizer"]["sharpness_aware"]
    assert own["phase"] == "pending" and own["perturbed"]
    assert sorted(own["pending"]) == sorted(own["perturbed"])
    model, _, _ = load_trained(run_dir, checkpoint="checkpoint.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, exported[k]), k


def test_summary_reports_the_share_of_sharpness_aware_steps(quick):
    # 11 steps per epoch, 2 epochs: LookSAM k=5 takes SAM steps 0, 5, 10, 15, 20 of 22
    summary = train(quick(optimizer="looksam", k=5), log=lambda *_: None).summary
    assert summary["sam_steps_per_step"] == pytest.approx(5 / 22)
    assert train(quick(optimizer="sam", name="sam"), log=lambda *_: None).summary["sam_steps_per_step"] == 1.0


@pytest.mark.parametrize("optimizer", ["sam", "esam", "sgd", "s2sam"])
def test_accumulating_micro_batches_equals_the_whole_batch(quick, optimizer):
    # the MLP has no BatchNorm, so splitting a batch changes nothing but the order of sums
    extra = {"beta": 1.0, "gamma": 0.5} if optimizer == "esam" else {}
    common = dict(model="mlp", optimizer=optimizer, epochs=1, crop_padding=0, flip=False, **extra)
    whole = train(quick(name="whole", **common), log=lambda *_: None)
    split = train(quick(name="split", accumulate=4, **common), log=lambda *_: None)
    a = torch.load(whole.run_dir / "model.pt")["model"]
    b = torch.load(split.run_dir / "model.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert whole.summary["final_train_loss"] == pytest.approx(split.summary["final_train_loss"], rel=1e-5)
