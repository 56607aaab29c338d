"""vlatrain/config.py: typed sections, YAML + key=value overrides, every error at once."""

from pathlib import Path

import pytest
import yaml

from vlatrain.config import Config, ConfigError, dump_config, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, d) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_example_config_loads_and_overrides_apply():
    cfg = load_config(ROOT / "configs" / "calvin.yaml",
                      ["data.path=/data/calvin.vla", "train.steps=7", "train.seed=3", "out=runs/x",
                       "data.cameras=[rgb_static]", "optim.lr=3e-4", "optim.grad_clip=null",
                       "data.augment.shift=0"])
    assert cfg.data.path == "/data/calvin.vla" and cfg.train.steps == 7 and cfg.train.seed == 3
    assert cfg.out == "runs/x" and cfg.data.cameras == ["rgb_static"]
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.optim.grad_clip is None
    assert cfg.data.augment.shift == 0


def test_str_fields_keep_the_override_text():
    cfg = load_config(None, ["data.path=2024", "out=true"])
    assert cfg.data.path == "2024" and cfg.out == "true"


def test_yaml_scientific_notation_is_a_float(tmp_path):
    cfg = load_config(write(tmp_path, {"optim": {"lr": "1e-4"}}))
    assert cfg.optim.lr == pytest.approx(1e-4)


def test_every_error_is_reported_at_once(tmp_path):
    p = write(tmp_path, {"data": {"batch_sise": 4, "history": 0},
                         "model": {"head": "transformer"},
                         "optim": {"lr": "fast"}, "trian": {}})
    with pytest.raises(ConfigError) as e:
        load_config(p, ["train.steps=-1", "eval.every=often", "log.nope=1", "model.dropout=2"])
    msg = str(e.value)
    for expected in ["data.batch_sise: unknown key (did you mean 'batch_size'?)",
                     "model.head: expected one of fc, lstm, gpt, discrete, lm, autoregressive, got 'transformer'",
                     "optim.lr: expected float, got 'fast'",
                     "trian: unknown key (did you mean 'train'?)",
                     "eval.every: expected int, got 'often'", "log.nope: unknown key",
                     "data.history: must be >= 1, got 0", "train.steps: must be >= 1, got -1",
                     "model.dropout: must be in [0, 1), got 2.0"]:
        assert expected in msg, expected
    assert len(e.value.errors) == 9
    # once the types are right, the range and consistency checks all report together
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {"data": {"history": 0, "batch_size": 0}}),
                    ["train.steps=0", "model.history=history", "optim.betas=[0.9]"])
    got = "\n".join(e.value.errors)
    for expected in ["data.history: must be >= 1", "data.batch_size: must be >= 1",
                     "train.steps: must be >= 1", "optim.betas: expected two numbers",
                     "model.history: history modelling needs data.history >= 2"]:
        assert expected in got, expected


def test_contradictions_are_errors():
    with pytest.raises(ConfigError, match="one-step modelling needs data.history=1"):
        load_config(None, ["data.history=4"])
    with pytest.raises(ConfigError, match="expected 4 weights"):
        load_config(None, ["data.history=4", "model.history=history", "train.history_weights=[1, 1]"])
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        load_config(None, ["train.precision=fp16", "train.device=cpu"])


def test_bad_override_syntax_and_sections():
    with pytest.raises(ConfigError, match="an override is key=value"):
        parse_overrides(["train.steps"])
    with pytest.raises(ConfigError, match="is a section"):
        load_config(None, ["train=3"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["out.x=3"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = load_config(None, ["model.head=discrete", "train.history_weights=null", "data.history=2",
                             "model.history=history", "optim.betas=[0.8, 0.95]"])
    again = Config.from_dict(cfg.to_dict())
    assert again == cfg
    p = tmp_path / "resolved.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg
