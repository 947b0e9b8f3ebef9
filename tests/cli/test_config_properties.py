"""Property-based: random values of random types for every config field, from a YAML file and from
flags. Each command either starts with correctly typed values or exits 2 with one ``error:`` line."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")  # dev-only
yaml = pytest.importorskip("yaml")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import flatlab.cli  # noqa: E402
from flatlab.train import TrainConfig  # noqa: E402
from flatlab.train.config import field_kinds  # noqa: E402
from flatlab.train.optimizer import check_optimizer  # noqa: E402

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
# one line of printable text (a flag's value is typed on one line)
TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_characters="\x7f"), max_size=8)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True, allow_infinity=True), TEXT,
    st.sampled_from(["5e-4", "1e3", "0.5", "inf", ".inf", "-1", "2", "1_000", "yes", "no", "null", "sam", "esam",
                     "sgd", "cpu", "cosine", "rigl", "0.3,0.6", '{"channels": [4, 8, 8]}', "{}"]),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(TEXT, SCALARS, max_size=2))
CHANGES = st.dictionaries(st.sampled_from(FIELDS), VALUES, min_size=1, max_size=4)


def well_typed(config: TrainConfig) -> None:
    for name, (kind, optional) in field_kinds().items():
        value = getattr(config, name)
        if value is None:
            assert optional, name
        elif kind is float:
            assert type(value) is float, (name, value)
        elif kind is int:
            assert type(value) is int, (name, value)
        elif kind is list:
            assert isinstance(value, list) and all(type(v) is float for v in value), (name, value)
        else:
            assert isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)), (name, value)


def outcome(monkeypatch, capsys, argv: list[str]) -> None:
    started = []

    def fake_train(config, **_):  # stands for the run: it starts with this config
        check_optimizer(config)
        started.append(config)

    monkeypatch.setattr(flatlab.cli, "train", fake_train)
    try:
        code = flatlab.cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    if started:
        assert code == 0
        well_typed(started[0])
    else:
        assert code == 2, (argv, code, err)
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("flatlab train: error: "), (argv, err)


COMMON = dict(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(**COMMON)
@given(changes=CHANGES)
def test_values_from_a_yaml_file(monkeypatch, capsys, changes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_text(yaml.safe_dump(changes, allow_unicode=True))
        outcome(monkeypatch, capsys, ["train", "--config", str(path)])


def flag_args(name: str, value) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool) and field_kinds()[name][0] is bool:
        return [flag if value else "--no-" + flag[2:]]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{flag}={value}"]
    if isinstance(value, (list, dict)):
        import json

        return [f"{flag}={json.dumps(value) if isinstance(value, dict) else ','.join(map(str, value))}"]
    return [f"{flag}={value}"]


@settings(**COMMON)
@given(changes=CHANGES)
def test_values_from_flags(monkeypatch, capsys, changes):
    argv = ["train"]
    for name, value in changes.items():
        argv += flag_args(name, value)
    outcome(monkeypatch, capsys, argv)
