"""Part (c) of the GPU readiness check, and the VLM half of part (d): real-size VLM steps.

The hub cannot be reached where the check runs, so the models are built from their configs
with random weights, in bf16, directly on the device, through the project's own adapters
(``vlatrain.vlm.paligemma`` / ``qwen2vl``): only ``load_pretrained`` is replaced, by
construction from ``config.json``. The configs below are those of ``google/paligemma-3b-pt-224``
and ``Qwen/Qwen2-VL-2B-Instruct`` (``--device cpu`` uses the tiny configs of the VLM tests). The
tokenizer is the tests' small word-level one (``tests/helpers/vlm_factories.py``): prompt
lengths are a few tokens off the real ones; image tokens (256 per PaliGemma frame, 64 per
Qwen2-VL frame at 224 px) dominate the sequence either way.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from gpu_check import ROOT
from gpu_act import one_window, time_forward
from gpu_parts import attempt, config, finish, headline_of, peak_gib, reset_peak, sync

REAL = {
    "paligemma": dict(  # google/paligemma-3b-pt-224: SigLIP-So400m/14 + Gemma-2B
        vision_config=dict(model_type="siglip_vision_model", hidden_size=1152,
                           intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                           image_size=224, patch_size=14, vision_use_head=False,
                           projection_dim=2048),
        text_config=dict(model_type="gemma", hidden_size=2048, intermediate_size=16384,
                         num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1,
                         head_dim=256, vocab_size=257216, max_position_embeddings=8192,
                         hidden_activation="gelu_pytorch_tanh"),
        projection_dim=2048, hidden_size=2048, vocab_size=257216),
    "qwen2vl": dict(  # Qwen/Qwen2-VL-2B-Instruct: 675M ViT + Qwen2-1.5B
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           in_channels=3),
        text_config=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         max_position_embeddings=32768, rms_norm_eps=1e-6,
                         tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": [16, 24, 24]}),
        tie_word_embeddings=True),
}
_TINY_TEXT = dict(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
TINY = {  # the sizes of tests/helpers/vlm_factories.py
    "paligemma": dict(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, image_size=16,
                           patch_size=8, vision_use_head=False),
        text_config=dict(model_type="gemma", **{**_TINY_TEXT, "num_key_value_heads": 1},
                         head_dim=8),
        projection_dim=32, hidden_size=32, vocab_size=320),
    "qwen2vl": dict(
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2),
        text_config=dict(**_TINY_TEXT, rope_parameters={"rope_type": "default",
                                                        "rope_theta": 10000.0,
                                                        "mrope_section": [2, 1, 1]})),
}
IMAGE_SIZE = {"real": 224, "tiny": 16}  # Qwen2-VL's frame size (a multiple of patch x merge)
VARIANTS = (("full", False), ("full", True), ("lora", True))  # (tuning, gradient checkpointing)


def weights_dir(name: str, size: str, out: Path) -> Path:
    """config.json, tokenizer and image-processor settings of ``name`` -- no weights."""
    import sys
    sys.path.insert(0, str(ROOT))  # the repository root: tests/helpers is a package under it
    from tests.helpers.vlm_factories import tiny_tokenizer
    cfg = copy.deepcopy((REAL if size == "real" else TINY)[name])
    out.mkdir(parents=True, exist_ok=True)
    if name == "paligemma":
        from transformers import PaliGemmaConfig, SiglipImageProcessor
        tok = tiny_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], bos="<bos>",
                             eos="<eos>", pad="<pad>", unk="<unk>", template="<bos> $A")
        side = cfg["vision_config"]["image_size"]
        conf = PaliGemmaConfig(image_token_index=tok.convert_tokens_to_ids("<image>"), **cfg)
        images = SiglipImageProcessor(size={"height": side, "width": side})
    else:
        from transformers import Qwen2VLConfig, Qwen2VLImageProcessor
        tok = tiny_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                              "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"], bos=None,
                             eos="<|im_end|>", pad="<|endoftext|>", unk="<|endoftext|>")
        ids = tok.convert_tokens_to_ids
        cfg["text_config"].update(bos_token_id=None, eos_token_id=ids("<|im_end|>"),
                                  pad_token_id=ids("<|endoftext|>"))
        conf = Qwen2VLConfig(image_token_id=ids("<|image_pad|>"),
                             video_token_id=ids("<|video_pad|>"),
                             vision_start_token_id=ids("<|vision_start|>"),
                             vision_end_token_id=ids("<|vision_end|>"), **cfg)
        vc = cfg["vision_config"]
        images = Qwen2VLImageProcessor(patch_size=vc["patch_size"],
                                       merge_size=vc["spatial_merge_size"],
                                       temporal_patch_size=vc["temporal_patch_size"])
    conf.save_pretrained(out)
    tok.save_pretrained(out)
    images.save_pretrained(out)
    return out


def random_backbone(name: str, device: torch.device) -> type:
    """The project's adapter for ``name``, its weights random from config.json, built on ``device``."""
    from vlatrain.vlm.loading import load_tokenizer, torch_dtype
    from vlatrain.vlm.registry import backbone_class

    class RandomWeights(backbone_class(name)):
        def load_pretrained(self, cls, path, model_types) -> None:
            conf = cls.config_class.from_pretrained(str(path))
            if self.vcfg.attn_implementation:
                conf._attn_implementation = self.vcfg.attn_implementation
            with torch.device(device):
                self.model = cls._from_config(conf, dtype=torch_dtype(self.vcfg.dtype))
            self.model.config.use_cache = False
            self.model.train()
            self.tokenizer = load_tokenizer(path)

    return RandomWeights


def build(ctx, name: str, path: Path, spec, *, lora: bool, checkpointing: bool):
    """(policy, prep): the VLM policy (gpt head) and its batch preparer, on the device."""
    from vlatrain.augment import BatchPreparer
    from vlatrain.config import AugmentConfig, ModelConfig
    from vlatrain.model import Policy, build_head
    from vlatrain.vlm.vlm_config import VLMConfig
    cfg = ModelConfig(backbone=name, path=str(path), head="gpt",
                      image_size=IMAGE_SIZE[ctx.size["vlm"]])
    cfg.vlm = VLMConfig(dtype="bfloat16", lora=lora, grad_checkpointing=checkpointing)
    torch.manual_seed(0)
    backbone = random_backbone(name, ctx.device)(cfg, spec)
    policy = Policy(backbone, build_head(cfg, backbone.feature_dim, spec), spec).to(ctx.device)
    prep = BatchPreparer(spec, {c: backbone.image_spec(c) for c in spec.cameras},
                         AugmentConfig(), ctx.device, discrete=False, use_state=True)
    return policy, prep


def batches(ctx, cfg, n: int) -> list[dict]:
    """``n`` training batches of the store, copied out of the loader's reused buffers."""
    from vlatrain import data
    loader = data.windows(data.open_store(str(ctx.store)), cfg.data, cfg.data.train_split).loader(
        batch_size=ctx.size["vlm_batch"], shuffle=True, seed=0, num_workers=0)
    out = []
    while len(out) < n:
        for b in loader:
            out.append({k: v.clone() if torch.is_tensor(v) else list(v) for k, v in b.items()})
            if len(out) == n:
                break
    loader.close()
    return out


def train_steps(ctx, name: str, path: Path, cfg, spec, lora: bool, checkpointing: bool) -> dict:
    """Timed optimiser steps of one variant: tokens/s, samples/s, peak memory."""
    from vlatrain.optim import build_optimizer
    from vlatrain.recipes import train as recipe
    s = ctx.size
    reset_peak(ctx.device)
    t0 = time.perf_counter()
    policy, prep = build(ctx, name, path, spec, lora=lora, checkpointing=checkpointing)
    built = time.perf_counter() - t0
    opt = build_optimizer(policy, cfg.optim)
    loss_fn = recipe.make_loss(cfg, policy, ctx.device)
    autocast = recipe.autocast_for("bf16", ctx.device)
    gen = torch.Generator(ctx.device).manual_seed(0)
    seen = []  # (rows, length) of each language-model call
    hook = policy.backbone.language_tower().register_forward_pre_hook(
        lambda m, a, kw: seen.append(tuple(kw["inputs_embeds"].shape[:2])), with_kwargs=True)
    data = batches(ctx, cfg, s["vlm_warmup"] + s["vlm_steps"])
    times, tokens, losses = [], 0, []
    for i, batch in enumerate(data):
        if i >= s["vlm_warmup"] and ctx.left() <= 0 and times:
            break
        sync(ctx.device)
        t = time.perf_counter()
        seen.clear()
        obs, tgt = prep(batch, train=True, gen=gen)
        with autocast():
            loss = loss_fn(policy(obs), tgt)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())  # syncs
        sync(ctx.device)
        prep.release()
        if i >= s["vlm_warmup"]:
            times.append(time.perf_counter() - t)
            tokens += seen[0][0] * seen[0][1]
    hook.remove()
    total = sum(p.numel() for p in policy.parameters())
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    res = {"steps": len(times), "batch_size": s["vlm_batch"],
           "samples_per_s": round(len(times) * s["vlm_batch"] / sum(times), 2),
           "tokens_per_s": round(tokens / sum(times), 1), "seq_len": seen[0][1] if seen else None,
           "peak_mem_gib": peak_gib(ctx.device), "params_m": round(total / 1e6, 1),
           "trainable_m": round(trainable / 1e6, 2), "build_s": round(built, 1),
           "losses": losses}
    del policy, opt, prep
    reset_peak(ctx.device)
    return res


def part_vlm(ctx) -> dict:
    from vlatrain import data
    cfg = config(ctx)
    spec = data.spec_from_store(data.open_store(str(ctx.store)), cfg.data)
    runs = {}
    for name in ("paligemma", "qwen2vl"):
        path = weights_dir(name, ctx.size["vlm"], ctx.work / name)
        for tuning, ckpt in VARIANTS:
            key = f"{name}/{tuning}/{'gc' if ckpt else 'no-gc'}"
            if ctx.left() <= 0:
                runs[key] = {"skipped": "the part's time budget was spent"}
                continue
            runs[key] = attempt(train_steps, ctx, name, path, cfg, spec, tuning == "lora", ckpt)
            reset_peak(ctx.device)  # a failed run's model is freed before the next is built
    saved = {}  # peak memory gradient checkpointing saves in full fine-tuning (CUDA only)
    for name in ("paligemma", "qwen2vl"):
        off, on = runs.get(f"{name}/full/no-gc", {}), runs.get(f"{name}/full/gc", {})
        if off.get("peak_mem_gib") is not None and on.get("peak_mem_gib") is not None:
            saved[name] = round(off["peak_mem_gib"] - on["peak_mem_gib"], 3)
    return finish({"size": ctx.size["vlm"], "dtype": "bfloat16 weights, bf16 autocast",
                   "cameras": list(spec.cameras), "runs": runs, "checkpointing_saves_gib": saved,
                   "headline": headline_of(runs, ("tokens_per_s", "samples_per_s", "peak_mem_gib")),
                   "notes": [f"{ctx.size['vlm']} configs, random weights; tokens = rows x sequence "
                             "length into the language model (padding included)"]}, runs)


def act_vlm(ctx) -> dict:
    """Latency of one observation window through Qwen2-VL (model forward: no checkpoint exists
    of a random-weight VLM for the policy runtime to load)."""
    from vlatrain import data
    from vlatrain.recipes import train as recipe
    cfg = config(ctx)
    spec = data.spec_from_store(data.open_store(str(ctx.store)), cfg.data)
    path = weights_dir("qwen2vl", ctx.size["vlm"], ctx.work / "qwen2vl")
    policy, prep = build(ctx, "qwen2vl", path, spec, lora=False, checkpointing=False)
    res = time_forward(ctx, policy, prep, one_window(ctx, cfg, spec), ctx.size["act_vlm_iters"],
                       recipe.autocast_for("bf16", ctx.device))
    return {"model": f"qwen2vl ({ctx.size['vlm']} config, bf16)", **res,
            "timed": "model forward",
            "note": "VLM: timed model forward (prepare + forward + decode of one window); a "
                    "random-weight VLM has no checkpoint the policy runtime could load"}
