"""End-to-end training throughput (images/s, evaluation excluded) of `flatlab train` on the CIFAR-10
JPEG copy in ../shared/data, for SGD and the SAM family, measured in one run on the same machine.

Each method trains a ResNet-18 layout at width 0.25 (0.70M parameters) for ``--epochs`` epochs on a
``--train-subset`` of the training set (batch 128, crop + flip); the first epoch is a warm-up and the
reported figure is the mean images/s of the others.

    python benchmarks/epoch_throughput.py        # writes benchmarks/results/epoch_throughput.{json,md}
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

import flatlab
from flatlab.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
METHODS = {
    "sgd": {},
    "sam": dict(rho=0.05),
    "esam": dict(rho=0.05, beta=0.6, gamma=0.5),
    "ssam-f": dict(rho=0.05, mask_sparsity=0.5, mask_interval=100, fisher_samples=128),
    "ssam-d": dict(rho=0.05, mask_sparsity=0.5, mask_interval=100),
    "s2sam": dict(rho=0.05),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--train-subset", type=int, default=5120)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"the CIFAR-10 JPEG copy is not at {args.data} (see ../shared/data/README.md)")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in METHODS.items():
            config = TrainConfig(
                dataset="imagefolder", data_root=str(args.data), model="resnet18", width=args.width,
                optimizer=name, epochs=args.epochs, batch_size=128, lr=0.05, train_subset=args.train_subset,
                test_subset=1000, out=tmp, name=name, **options,
            )
            result = train(config, log=lambda *_: None, progress=False)
            epochs = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
            speed = statistics.fmean(e["images_per_s"] for e in epochs[1:])
            rows.append({"optimizer": name, "images_per_s": round(speed, 1),
                         "epoch_s": round(statistics.fmean(e["train_time_s"] for e in epochs[1:]), 2),
                         "hyper_parameters": options})
            print(f"{name:8s} {speed:8.1f} img/s")
    sgd = rows[0]["images_per_s"]
    sam = rows[1]["images_per_s"]
    for row in rows:
        row["speed_vs_sgd"] = round(row["images_per_s"] / sgd, 3)
        row["speed_vs_sam"] = round(row["images_per_s"] / sam, 3)
    result = {
        "benchmark": "epoch_throughput",
        "command": "python benchmarks/epoch_throughput.py",
        "data": "CIFAR-10 (JPEG copy), imagefolder tar.gz, decoded once into a cached uint8 tensor",
        "model": f"resnet18 width {args.width}",
        "train_subset": args.train_subset,
        "epochs": args.epochs,
        "batch": 128,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "flatlab": flatlab.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "epoch_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# End-to-end training throughput ({result['model']}, CIFAR-10 JPEG copy, batch 128, CPU, "
        f"{result['threads']} threads)",
        "",
        f"Command: `{result['command']}`; {args.train_subset} training images, mean over epochs 2..{args.epochs}.",
        "",
        "| optimizer | images/s | epoch (s) | x SGD speed | x SAM speed |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['optimizer']} | {r['images_per_s']} | {r['epoch_s']} | {r['speed_vs_sgd']} | {r['speed_vs_sam']} |"
              for r in rows]
    (args.out / "epoch_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
