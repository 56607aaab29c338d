"""Tiny random-initialised VLMs of the real architectures, saved as local weight directories.

Each ``make_<backbone>(dir)`` builds a model of the same ``transformers`` class as the real
checkpoint (Kosmos-2, LLaVA, PaliGemma, Qwen2-VL; CLIP vision + Llama LM for Flamingo) from a
config a few thousand parameters wide, saves it with ``save_pretrained`` beside a tokenizer
built locally with the ``tokenizers`` library (the model's special tokens, a small word-level
vocabulary) and the model's image-processor config -- the directory layout a downloaded
checkpoint has, with nothing fetched from anywhere.
"""

from __future__ import annotations

from pathlib import Path

import torch

V = 320  # vocabulary size of every tiny model (>= 256 action bins + words; the top ids are fillers)
WORDS = ("an image of a robot open close the drawer push pick lift place red blue block slider "
         "turn on off light bulb switch left right 0 1 2 3 user assistant you are helpful system "
         "what action should take to : . , ? !").split()


def tiny_tokenizer(specials: list[str], *, bos: str | None, eos: str, pad: str, unk: str,
                   template: str | None = None):
    """A word-level fast tokenizer over :data:`WORDS` with ``specials`` as special tokens.

    ``template`` is what encoding with special tokens adds, as the real tokenizer does
    (``"<s> $A"`` for Llama's BOS); None adds nothing.
    """
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.normalizers import Lowercase
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tokens = list(dict.fromkeys(specials + list(WORDS)))
    tokens += [f"<filler_{i}>" for i in range(V - len(tokens))]
    assert len(tokens) == V
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(WordLevel(vocab, unk_token=unk))
    tok.normalizer = Lowercase()
    tok.pre_tokenizer = Whitespace()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if template:
        used = [t for t in template.split() if t in vocab]
        tok.post_processor = TemplateProcessing(single=template,
                                                special_tokens=[(t, vocab[t]) for t in used])
    named = {bos, eos, pad, unk}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk,
        additional_special_tokens=[s for s in specials if s not in named])


def _text(**kw) -> dict:
    return dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, **kw)


def _clip_vision(**kw) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                image_size=16, patch_size=8, **kw)


def _clip_processor(size: int = 16):
    from transformers import CLIPImageProcessor
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _save(out: Path, model, tokenizer, processor) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def make_kosmos2(out: Path) -> Path:
    """microsoft/kosmos-2-patch14-224 in miniature (4 latent image tokens instead of 64).

    The processor adds its grounding tags and patch-index tokens to the tokenizer (4 patch
    indices here, 1024 in the real model) and the model's vocabulary covers them, as it does.
    """
    from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration, Kosmos2Processor
    tok = tiny_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], bos="<s>", eos="</s>",
                         pad="<pad>", unk="<unk>", template="<s> $A </s>")
    proc = Kosmos2Processor(_clip_processor(), tok, num_patch_index_tokens=4)
    cfg = Kosmos2Config(
        text_config=dict(vocab_size=len(tok), embed_dim=32, layers=2, ffn_dim=64, attention_heads=4,
                         max_position_embeddings=1024, dropout=0.0, attention_dropout=0.0,
                         activation_dropout=0.0, layerdrop=0.0, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        vision_config=_clip_vision(attention_dropout=0.0), latent_query_num=4)
    return _save(out, Kosmos2ForConditionalGeneration(cfg), tok, proc)


def make_llava(out: Path) -> Path:
    """llava-hf/llava-1.5-7b-hf in miniature: CLIP vision, 2-layer MLP projector, Llama LM."""
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    tok = tiny_tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>"], bos="<s>", eos="</s>",
                         pad="<pad>", unk="<unk>", template="<s> $A")
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**_clip_vision()),
                      text_config=LlamaConfig(**_text(pad_token_id=tok.pad_token_id)),
                      image_token_id=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=-2, vision_feature_select_strategy="default")
    proc = LlavaProcessor(_clip_processor(), tok, patch_size=8, num_additional_image_tokens=1,
                          vision_feature_select_strategy="default")
    return _save(out, LlavaForConditionalGeneration(cfg), tok, proc)


def make_paligemma(out: Path) -> Path:
    """google/paligemma-3b-pt-224 in miniature: SigLIP vision, linear projector, Gemma LM."""
    from transformers import (PaliGemmaConfig, PaliGemmaForConditionalGeneration,
                              PaliGemmaProcessor, SiglipImageProcessor)
    tok = tiny_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], bos="<bos>", eos="<eos>",
                         pad="<pad>", unk="<unk>", template="<bos> $A")
    cfg = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, image_size=16, patch_size=8,
                           vision_use_head=False),
        text_config=dict(model_type="gemma", **{**_text(), "num_key_value_heads": 1}, head_dim=8),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vocab_size=V,
        projection_dim=32, hidden_size=32)
    images = SiglipImageProcessor(size={"height": 16, "width": 16}, image_seq_length=4)
    proc = PaliGemmaProcessor(images, tok)
    return _save(out, PaliGemmaForConditionalGeneration(cfg), tok, proc)


def make_qwen2vl(out: Path) -> Path:
    """Qwen/Qwen2-VL-2B-Instruct in miniature: patch 4, 2x2 merge, M-RoPE sections (2, 1, 1)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor
    tok = tiny_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                          "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"], bos=None,
                         eos="<|im_end|>", pad="<|endoftext|>", unk="<|endoftext|>")
    ids = tok.convert_tokens_to_ids
    cfg = Qwen2VLConfig(
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2),
        text_config=_text(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                           "mrope_section": [2, 1, 1]},
                          bos_token_id=None, eos_token_id=ids("<|im_end|>"),
                          pad_token_id=ids("<|endoftext|>")),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    images = Qwen2VLImageProcessor(patch_size=4, merge_size=2, temporal_patch_size=2,
                                   min_pixels=16 * 16, max_pixels=64 * 64)
    # (the whole Qwen2VLProcessor also needs a video processor, which needs torchvision)
    return _save(out, Qwen2VLForConditionalGeneration(cfg), tok, images)


def make_flamingo(out: Path) -> Path:
    """A Flamingo-style layout: ``vision/`` (a whole CLIP model, as openai/clip-vit-large-patch14
    is published) and ``lm/`` (a Llama causal LM)."""
    from transformers import CLIPConfig, CLIPModel, LlamaConfig, LlamaForCausalLM
    tok = tiny_tokenizer(["<unk>", "<s>", "</s>", "<pad>"], bos="<s>", eos="</s>", pad="<pad>",
                         unk="<unk>", template="<s> $A")
    out.mkdir(parents=True, exist_ok=True)
    vision = CLIPModel(CLIPConfig(
        vision_config=_clip_vision(), projection_dim=16,
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, vocab_size=64)))
    vision.save_pretrained(out / "vision")
    _clip_processor().save_pretrained(out / "vision")
    lm = LlamaForCausalLM(LlamaConfig(**_text(pad_token_id=tok.pad_token_id,
                                              bos_token_id=tok.bos_token_id,
                                              eos_token_id=tok.eos_token_id)))
    lm.save_pretrained(out / "lm")
    tok.save_pretrained(out / "lm")
    return out


FACTORIES = {"kosmos2": make_kosmos2, "llava": make_llava, "paligemma": make_paligemma,
             "qwen2vl": make_qwen2vl, "flamingo": make_flamingo}


def build_all(root: Path) -> dict[str, Path]:
    """Every tiny backbone directory under ``root`` (seeded: the same weights every time)."""
    paths = {}
    for name, make in FACTORIES.items():
        torch.manual_seed(0)
        paths[name] = make(Path(root) / name)
    return paths
