"""``vlatrain init``: a config fitted to each source's sample store trains without edits; the
example configs are what ``init`` writes; a held-out fraction stands in for a missing
validation split; a config that does not fit a store lists every problem before step 1."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cli.vladata import main as vladata_main
from cli.vlatrain import main as vlatrain_main

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["train.steps=2", "train.threads=1", "data.num_workers=0", "eval.batches=1",
         "log.progress=false", "log.tensorboard=false", "model.width=16", "model.hidden=32",
         "model.layers=1", "model.image_size=24"]
# config name -> (sample command, convert command): exactly scripts/samples.sh
SOURCES = {
    "bridge": (["oxe", "{d}/raw", "--dataset", "bridge"], ["oxe", "{d}/raw"]),
    "aloha": (["hdf5", "{d}/raw", "--layout", "aloha"], ["hdf5", "{d}/raw", "--layout", "aloha"]),
    "robomimic": (["hdf5", "{d}/raw", "--layout", "robomimic"],
                  ["hdf5", "{d}/raw/demo.hdf5", "--layout", "robomimic"]),
    "lerobot": (["lerobot", "{d}/raw"], ["lerobot", "{d}/raw"]),
}


def cli(main, *args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module", params=sorted(SOURCES))
def sample_store(request, tmp_path_factory):
    """(config name, store) of a source's sample, made as scripts/samples.sh makes it."""
    name = request.param
    d = tmp_path_factory.mktemp(name)
    sample, conv = SOURCES[name]
    cli(vladata_main, "sample", *(a.format(d=d) for a in sample))
    store = d / "samples" / f"{name}.vla"
    cli(vladata_main, "convert", *(a.format(d=d) for a in conv[:2]), store, *conv[2:], "--json")
    return name, store


def test_init_writes_the_example_config_and_it_trains(sample_store, tmp_path, monkeypatch):
    name, store = sample_store
    monkeypatch.chdir(store.parents[1])  # as scripts/samples.sh lays the samples out
    (store.parents[1] / "configs").mkdir(exist_ok=True)
    cli(vlatrain_main, "init", f"samples/{name}.vla", "-o", f"configs/{name}.yaml", "--force")
    fitted = (store.parents[1] / "configs" / f"{name}.yaml").read_text()
    # configs/<source>.yaml is exactly what `vlatrain init` writes
    assert fitted == (ROOT / "configs" / f"{name}.yaml").read_text()
    text = cli(vlatrain_main, "run", ROOT / "configs" / f"{name}.yaml", f"data.path={store}",
               f"out={tmp_path / 'run'}", *QUICK, "log.tensorboard=true")
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file(), text
    # the header before step 1 and the closing report
    for line in ("device     cpu | precision fp32", "trainable /", "windows    train 'train' ",
                 "per epoch of batch", f"run dir    {tmp_path / 'run'}",
                 f"tensorboard --logdir {tmp_path / 'run' / 'tensorboard'}",
                 "mean-action MAE", "MAE: mean absolute error"):
        assert line in text, (line, text)


def test_init_reads_the_store(sample_store):
    name, store = sample_store
    text = CliRunner().invoke(vlatrain_main, ["init", str(store)]).output
    cfg = yaml.safe_load(text)
    import vladata
    ds = vladata.open(store)
    feats = ds.info["features"]
    assert cfg["data"]["path"] == str(store)
    assert ["observation.images." + c for c in cfg["data"]["cameras"]] == [
        k for k in feats if k.startswith("observation.images.")]
    names = feats["observation.state"]["names"]
    assert cfg["data"]["state_dims"] == list(range(len(names)))
    for i, n in enumerate(names):  # each state dim is named in its comment
        assert f"- {i}" in text and f"# {n}" in text
    assert ", ".join(feats["action"]["names"]) in text
    splits = set(ds.episodes["split"].to_list())
    if "validation" in splits or "test" in splits:
        assert cfg["data"]["val_split"] in splits and "val_fraction" not in cfg["data"]
    else:
        assert cfg["data"]["val_fraction"] == 0.1
    has_embedding = "embedding" in ds.segments.columns and ds.segments["embedding"].is_not_null().any()
    assert cfg["model"]["language"] == ("embedding" if has_embedding else
                                        "text" if ds.segments.height else "none")


def test_presets(calvin_store, tmp_path):
    for preset, history in (("history", 4), ("vlm", 8)):
        cfg = yaml.safe_load(cli(vlatrain_main, "init", calvin_store, "--preset", preset))
        assert cfg["data"]["history"] == history and cfg["model"]["history"] == "history"
    assert yaml.safe_load(cli(vlatrain_main, "init", calvin_store, "--preset", "vlm"))[
        "model"]["backbone"] == "paligemma"
    out = tmp_path / "h.yaml"
    cli(vlatrain_main, "init", calvin_store, "--preset", "history", "-o", out)
    cli(vlatrain_main, "run", out, f"out={tmp_path / 'run'}", *QUICK)
    r = CliRunner().invoke(vlatrain_main, ["init", str(calvin_store), "-o", str(out)])
    assert r.exit_code == 1 and "exists" in r.output  # never overwrites without --force


def test_calvin_sample_config_trains(calvin_store, tmp_path):
    cli(vlatrain_main, "run", ROOT / "configs" / "calvin_sample.yaml", f"data.path={calvin_store}",
        "data.batch_size=8", f"out={tmp_path / 'run'}", *QUICK)


def test_held_out_fraction_is_fixed_by_episode(calvin_store):
    import vladata
    from vlatrain import data
    from vlatrain.config import Config
    ds = vladata.open(calvin_store)
    cfg = Config.from_dict({"data": {"path": str(calvin_store), "val_fraction": 0.5,
                                     "val_split": "held-out"}}).data
    train, val = data.held_out(ds, cfg)
    n = sum(s == "train" for s in ds.episodes["split"].to_list())
    assert sorted(train + val) == [i for i, s in enumerate(ds.episodes["split"].to_list())
                                   if s == "train"]
    assert len(val) == max(1, round(0.5 * n)) and not set(train) & set(val)
    assert data.held_out(ds, cfg) == (train, val)  # the same every time
    tw, vw = data.windows(ds, cfg, "train"), data.windows(ds, cfg, "held-out")
    t_eps = {int(tw.ranges.r_episode[r]) for r in range(len(tw.ranges.r_lo))}
    v_eps = {int(vw.ranges.r_episode[r]) for r in range(len(vw.ranges.r_lo))}
    assert t_eps == set(train) and v_eps == set(val)


def test_val_fraction_validation():
    from vladata.errors import ConfigError
    from vlatrain.config import Config
    with pytest.raises(ConfigError) as e:
        Config.from_dict({"data": {"val_fraction": 1.5, "val_split": "train"}})
    assert "data.val_fraction: must be in (0, 1)" in str(e.value)
    assert "data.val_split: names the held-out episodes" in str(e.value)


def test_calvin_config_on_an_aloha_store_lists_every_problem(sample_store, tmp_path):
    name, store = sample_store
    if name != "aloha":
        pytest.skip("one foreign store is enough")
    out = tmp_path / "run"
    r = CliRunner().invoke(vlatrain_main, ["run", str(ROOT / "configs" / "calvin.yaml"),
                                           f"data.path={store}", f"out={out}", *QUICK])
    assert r.exit_code == 1 and "Traceback" not in r.output
    for text in ("has no camera 'rgb_static'", "has no camera 'rgb_gripper'",
                 "data.state_dims:", "no dims [14]", "data.val_split:", "data.val_fraction=0.1",
                 "model.language: 'embedding'", "data.batch_size:", "data.over=episodes"):
        assert text in r.output, (text, r.output)
    assert not out.exists()


def test_version_on_both_clis():
    from importlib.metadata import version
    for main in (vladata_main, vlatrain_main):
        assert version("vlakit") in cli(main, "--version")


def test_report_flags_every_dimension_worse_than_the_baseline():
    from vlatrain.evaluate import format_report
    m = {"val/mae/dx": 0.5, "val/mae_baseline/dx": 1.0, "val/mae/dz": 2.0,
         "val/mae_baseline/dz": 1.0, "val/mae/dpitch": 1.0, "val/mae_baseline/dpitch": 1.0,
         "val/arm_mae": 7 / 6, "val/arm_mae_baseline": 1.0, "val/arm_mae_ratio": 7 / 6,
         "val/loss": 0.1, "val/samples": 10}
    lines = format_report(m, ["dx", "dz", "dpitch", "gripper"]).splitlines()
    flagged = [ln.split()[0] for ln in lines if "<- worse than the mean action" in ln]
    assert flagged == ["dz", "dpitch"]
    assert any("worse than the mean action on 2 dimension(s): dz, dpitch" in ln for ln in lines)
    assert any(ln.startswith("MAE: mean absolute error") for ln in lines)


def test_inspect_prints_tables(sample_store):
    name, store = sample_store
    if name != "bridge":
        pytest.skip("one store with a gripper is enough")
    text = cli(vladata_main, "inspect", store)
    assert "{" not in text  # no Python dicts
    assert "normalization (action.norm): quantile (q01 -> -1, q99 -> +1)" in text
    assert "gripper: closed/open 0/1 -> -1/1 (binarised)" in text
    assert "tokenizer (action.tokens):" in text and "    bins         256" in text
