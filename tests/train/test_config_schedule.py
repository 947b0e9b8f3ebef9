import json
import math

import pytest

from flatlab.train import TrainConfig, load_config_file
from flatlab.train.schedule import lr_factor


def test_unknown_keys_and_bad_values_are_named():
    with pytest.raises(ValueError, match="unknown config key .colour."):
        TrainConfig.from_dict({"colour": "red"})
    for field, value in [("epochs", 0), ("lr", -1.0), ("batch_size", 0), ("amp", "fp8"), ("lr_schedule", "poly"),
                         ("label_smoothing", 1.0), ("sparsity", 1.0), ("width", 0.0)]:
        with pytest.raises(ValueError, match=field):
            TrainConfig(**{field: value})


def test_sparsity_needs_a_method():
    with pytest.raises(ValueError, match="--sparse"):
        TrainConfig(sparsity=0.9)


def test_optimizer_kwargs_rename_and_drop_unset():
    config = TrainConfig(optimizer="ssam-f", rho=0.1, mask_sparsity=0.9, fisher_samples=16)
    assert config.optimizer_kwargs() == {"rho": 0.1, "sparsity": 0.9, "num_samples": 16}


def test_yaml_and_json_config_files(tmp_path):
    (tmp_path / "a.yaml").write_text("optimizer: esam\nbeta: 0.5\nmilestones: [0.3, 0.6]\n")
    (tmp_path / "b.json").write_text(json.dumps({"epochs": 3}))
    assert load_config_file(tmp_path / "a.yaml") == {"optimizer": "esam", "beta": 0.5, "milestones": [0.3, 0.6]}
    assert load_config_file(tmp_path / "b.json") == {"epochs": 3}
    (tmp_path / "bad.yaml").write_text("optimizer: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config_file(tmp_path / "bad.yaml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="mapping"):
        load_config_file(tmp_path / "list.json")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config_file(tmp_path / "nope.yaml")


def test_shipped_configs_are_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
    assert configs, "configs/ ships the papers' settings"
    for path in configs:
        TrainConfig.from_dict(load_config_file(path))


def test_lr_factors_hand_computed():
    assert lr_factor(0, 100, "cosine") == 1.0
    assert lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, "cosine") == pytest.approx(0.0)
    # warm-up of 10 steps, then cosine over the remaining 90
    assert lr_factor(0, 100, "cosine", warmup=10) == pytest.approx(0.1)
    assert lr_factor(9, 100, "cosine", warmup=10) == pytest.approx(1.0)
    assert lr_factor(55, 100, "cosine", warmup=10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(49, 100, "step", milestones=(0.5, 0.75)) == 1.0
    assert lr_factor(50, 100, "step", milestones=(0.5, 0.75)) == pytest.approx(0.1)
    assert lr_factor(80, 100, "step", milestones=(0.5, 0.75)) == pytest.approx(0.01)
    assert lr_factor(99, 100, "constant") == 1.0
