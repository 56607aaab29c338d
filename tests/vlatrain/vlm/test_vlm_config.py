"""model.vlm options, the registry, the LM-logits head, and every error a user can run into."""

import dataclasses
import re
import shutil
import subprocess
import sys

import pytest
import torch

from vladata.errors import ConfigError
from vladata.tokenize import ActionTokenizer
from tests.helpers.vlm_factories import V
from tests.helpers.vlm_helpers import make_policy, model_config, vlm_spec
from vlatrain.config import ModelConfig
from vlatrain.model.backbone import BackboneOutput
from vlatrain.vlm import VLM_BACKBONES, LMLogitsHead, VLMConfig, register, vlm_config
from vlatrain.vlm.vlm_config import history_mode
from vlatrain.vlm.loading import WeightsError
from vlatrain.vlm.sequence import SLOT


def build(name, path, spec=None, **kw):
    vlm = {k: kw.pop(k) for k in list(kw) if k in VLMConfig.__dataclass_fields__}
    cfg = model_config(name, path, **kw, **vlm)
    return VLM_BACKBONES[name](cfg, spec or vlm_spec())


# ---------------------------------------------------------------- options

def test_vlm_options_parse_and_report_every_problem():
    cfg = VLMConfig.from_dict({"lora": True, "lora_r": 8, "lora_dropout": 0})
    assert cfg.lora and cfg.lora_r == 8 and cfg.lora_dropout == 0.0
    assert VLMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError) as e:
        VLMConfig.from_dict({"lorra": True, "lora_r": "8", "freeze_vision": 1, "dtype": None})
    msg = str(e.value)
    assert "model.vlm.lorra: unknown key (did you mean 'lora'?)" in msg
    assert "model.vlm.lora_r: expected int, got '8'" in msg
    assert "model.vlm.freeze_vision: expected bool, got 1" in msg
    assert "model.vlm.dtype: expected str, got null" in msg
    with pytest.raises(ConfigError) as e:
        VLMConfig.from_dict({"dtype": "float16", "prompt": "no image here",
                             "lora_r": 0, "lr_scale": 0})
    msg = str(e.value)
    for part in ("model.vlm.dtype: expected one of float32, bfloat16",
                 "model.vlm.prompt: must contain {image} exactly once",
                 "model.vlm.lora_r: must be >= 1", "model.vlm.lr_scale: must be > 0"):
        assert part in msg
    with pytest.raises(ConfigError, match="model.vlm: expected a mapping"):
        VLMConfig.from_dict(["lora"])


def test_options_come_from_the_model_config():
    plain = ModelConfig(backbone="kosmos2", history="history")
    assert vlm_config(plain) == VLMConfig()
    assert history_mode(plain, vlm_config(plain)) == "history"
    plain.history = "interleaved"
    plain.vlm = VLMConfig(freeze_vision=True)
    assert history_mode(plain, vlm_config(plain)) == "interleaved"
    plain.vlm = {"freeze_vision": True}
    assert vlm_config(plain).freeze_vision
    plain.vlm = VLMConfig(lora_r=-1)
    with pytest.raises(ConfigError, match="lora_r"):
        vlm_config(plain)


def test_registry_is_lazy_and_registers_into_the_trainer():
    registry = register({"tiny": object})
    assert set(registry) == {"tiny", "kosmos2", "llava", "paligemma", "qwen2vl", "flamingo"}
    code = ("import sys, vlatrain.vlm, vlatrain.model; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- weights directories

def test_model_path_must_be_a_local_weights_directory(tiny_dirs, tmp_path):
    with pytest.raises(WeightsError, match="model.path is not set"):
        build("kosmos2", "")
    with pytest.raises(WeightsError, match="not a directory.*local directory only"):
        build("kosmos2", tmp_path / "missing")
    with pytest.raises(WeightsError, match="no config.json"):
        build("kosmos2", tmp_path)
    with pytest.raises(WeightsError, match="model_type='llava', expected 'kosmos-2'"):
        build("kosmos2", tiny_dirs["llava"])


def test_a_directory_without_image_settings_or_with_missing_weights(tiny_dirs, tmp_path):
    from safetensors.torch import load_file, save_file
    d = tmp_path / "llava"
    shutil.copytree(tiny_dirs["llava"], d)
    (d / "processor_config.json").unlink()
    with pytest.raises(WeightsError, match="no preprocessor_config.json"):
        build("llava", d)
    shutil.copy(tiny_dirs["llava"] / "processor_config.json", d)
    weights = load_file(d / "model.safetensors")
    dropped = next(k for k in weights if "multi_modal_projector" in k)
    del weights[dropped]
    save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="not in the checkpoint"):
        build("llava", d)


def test_flamingo_needs_a_vision_and_an_lm_directory(tiny_dirs, tmp_path):
    d = tmp_path / "flamingo"
    shutil.copytree(tiny_dirs["flamingo"] / "lm", d / "lm")
    with pytest.raises(WeightsError, match="model.path/vision"):
        build("flamingo", d)
    shutil.copytree(tiny_dirs["flamingo"] / "lm", d / "vision")  # an LM where the encoder belongs
    with pytest.raises(WeightsError, match="model_type='llama'; the Flamingo vision encoder"):
        build("flamingo", d)
    with pytest.raises(WeightsError, match="leave no cross-attention layer"):
        build("flamingo", tiny_dirs["flamingo"], cross_attn_every=5)


def test_qwen2vl_frames_must_fit_its_patch_grid(tiny_dirs):
    cfg = model_config("qwen2vl", tiny_dirs["qwen2vl"])
    cfg.image_size = 18
    with pytest.raises(ConfigError, match="multiple of 8.*got 18; e.g. 16"):
        VLM_BACKBONES["qwen2vl"](cfg, vlm_spec())


def test_a_vlm_needs_a_camera(tiny_dirs):
    spec = dataclasses.replace(vlm_spec(), cameras=(), image_shapes={})
    with pytest.raises(ConfigError, match="at least one camera"):
        build("llava", tiny_dirs["llava"], spec=spec)


def test_a_missing_state_is_reported(tiny_dirs):
    from tests.helpers.vlm_helpers import prepared
    policy, prep, spec = make_policy(tiny_dirs, "kosmos2")
    obs, _ = prepared(prep, spec)
    obs.state = None
    with pytest.raises(ValueError, match="model.use_state"):
        policy(obs)


# ---------------------------------------------------------------- the LM-logits head

def test_action_token_ids_follow_the_store_layout(tiny_dirs):
    spec = vlm_spec()  # OpenVLA layout over this vocabulary: used as recorded
    bb = build("paligemma", tiny_dirs["paligemma"], spec, head="lm")
    assert bb.action_ids.tolist() == list(spec.token_ids)
    offset = dataclasses.replace(spec, token_ids=tuple(range(10, 10 + spec.n_bins)),
                                 extra={"tokenizer": ActionTokenizer(bins=spec.n_bins).to_dict()})
    bb = build("paligemma", tiny_dirs["paligemma"], offset, head="lm")
    assert bb.action_ids.tolist() == [V - 1 - k for k in range(spec.n_bins)]  # OpenVLA's, here
    other = ActionTokenizer(bins=spec.n_bins, layout="robovlms", vocab_size=32000, n_special=3)
    wrong = dataclasses.replace(spec, extra={"tokenizer": other.to_dict()})
    with pytest.raises(ConfigError, match=f"vocabulary of 32000 tokens, this model's tokenizer has {V}"):
        build("paligemma", tiny_dirs["paligemma"], wrong, head="lm")
    none = dataclasses.replace(spec, token_ids=(), bin_centers=(), extra={})
    with pytest.raises(ConfigError, match="needs the store's action tokenizer"):
        build("paligemma", tiny_dirs["paligemma"], none, head="lm")
    with pytest.raises(ConfigError, match="needs the store's action tokenizer"):
        LMLogitsHead(none)


def test_lm_logits_are_the_lm_heads_scores_of_the_action_ids(tiny_dirs):
    from tests.helpers.vlm_helpers import prepared
    policy, prep, spec = make_policy(tiny_dirs, "llava", "lm", "history")
    bb = policy.backbone.eval()
    obs, _ = prepared(prep, spec)
    seen = {}
    run = bb.run_language_model
    bb.run_language_model = lambda e, lay, m: seen.setdefault("h", (run(e, lay, m), lay))[0]
    with torch.no_grad():
        out = bb(obs)
    hidden, lay = seen["h"]
    r, c = lay.where(SLOT)
    full = bb.output_embeddings()(hidden[r, c])  # (n, V): the LM's own logits
    assert out.lm_logits.shape == (4, 3, spec.chunk * 7, spec.n_bins)
    assert torch.allclose(out.lm_logits.reshape(-1, spec.n_bins), full[:, bb.action_ids], atol=1e-6)


def test_lm_head_reshapes_and_narrows_full_vocabulary_logits():
    spec = vlm_spec(history=2)
    head = LMLogitsHead(spec)
    k, n = spec.n_bins, spec.chunk * 7
    full = torch.randn(2, 2, n, V)
    feats = BackboneOutput(torch.zeros(2, 2, 4), torch.ones(2, 2, dtype=torch.bool))
    feats.lm_logits = full
    out = head(feats)
    assert out.shape == (2, 2, spec.chunk, 7, k)
    assert torch.equal(out[1, 0, 2, 3], full[1, 0, 2 * 7 + 3, list(spec.token_ids)])
    feats.lm_logits = full[..., list(spec.token_ids)]
    assert torch.equal(head(feats), out)
    feats.lm_logits = full[:, :, :5]
    with pytest.raises(ValueError, match="5 action queries per step, expected chunk x action"):
        head(feats)
    feats.lm_logits = None
    with pytest.raises(ValueError, match="returned none; use a VLM backbone"):
        head(feats)


def test_default_prompts_tokenize_to_known_tokens(tiny_dirs):
    """Each special token a default prompt spells out is one token of the model's vocabulary."""
    for name in ("kosmos2", "llava", "paligemma", "qwen2vl", "flamingo"):
        bb = build(name, tiny_dirs[name])
        before, after = bb.prompt.ids("open the drawer")
        assert bb.tokenizer.unk_token_id not in before + after, name
        tokens = bb.tokenizer.convert_ids_to_tokens(list(before + after))
        for special in re.findall(r"<[^<>\s]+>", bb.prompt.template):
            assert special in tokens, (name, special)


@pytest.mark.parametrize("name", ["kosmos2", "llava", "paligemma", "qwen2vl", "flamingo"])
def test_example_configs_are_valid(name):
    import yaml
    from pathlib import Path
    from vlatrain.config import Config
    d = yaml.safe_load((Path(__file__).parents[3] / "configs" / f"{name}.yaml").read_text())
    assert d["model"]["backbone"] == name and name in VLM_BACKBONES
    cfg = Config.from_dict(d)
    assert isinstance(cfg.model.vlm, VLMConfig)
    assert history_mode(cfg.model, cfg.model.vlm) in ("history", "interleaved")
