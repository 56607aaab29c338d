"""The VLM backbone: a pretrained vision-language model behind the trainer's backbone interface.

:class:`VLMBackbone` does everything the adapters share; an adapter (``kosmos2.py``, ...) only
says how its model is loaded, where its towers are, how one frame becomes visual tokens and how
its language model is called. One forward::

    Observation -> existing steps (b, t) -> frames (S*cams, 3, H, W) -> vision tower
      -> token sequences (vlatrain.vlm.sequence / interleaved) -> embeddings:
         text ids through the LM's own embedding, visual tokens in the frames' places,
         the learnable action token, the state token, the LM-head action queries
      -> language model -> last hidden state of each ACTION token = the step's feature (B, h, D)
                        -> LM logits of the SLOT tokens over the action-token ids (B, h, c*A, K)

The learnable action token (RoboVLMs) is appended after the prompt; its last hidden state is
what the policy head reads, so F is the LM's hidden size. With ``model.head=lm`` the backbone
also returns ``lm_logits``: c*A learnable action-query tokens follow the action token and the
LM's own output layer scores each of them over the K action-token ids (parallel decoding of the
whole chunk). With ``model.vlm.autoregressive`` the queries become a causal token sequence:
query j's input is its learnable embedding plus the LM's embedding of action token j-1, so its
logits predict token j from the tokens before it. Training is teacher forced (the target bins
come as ``Observation.action_tokens`` (B, h, c*A)); without them the backbone generates
greedily (:mod:`vlatrain.vlm.decoding`) and returns the logits each token was chosen from, so
their argmax is the generated chunk. The frames are encoded once; adapters with
``supports_kv_cache`` (LLaVA, PaliGemma, Kosmos-2, Qwen2-VL: a transformers decoder called with
a ``cache``) run the prompt once into a key/value cache and then one new token per step
(``model.vlm.kv_cache``, on by default); Flamingo, whose gated cross-attention layers are not
cache-aware, runs the whole sequence once per token. Only the K columns are computed -- the full
vocabulary would be B*h*c*A*V floats -- so ``lm_logits`` is (B, h, c*A, K), class k being bin k.

Which vocabulary ids are the action tokens: the store's recorded layout when it is one that
overwrites the last ids of an LM vocabulary (``openvla``/``robovlms``, checked against this
tokenizer's ``vocab_size``); for vladata's default ``offset`` layout (ids not tied to any LM) the
OpenVLA layout of this model's tokenizer, ``vocab_size - 1 - bin``. Either way the loss is on
bins, so the stored tokens need not be rewritten.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vladata.errors import ConfigError
from vlatrain.model.backbone import BackboneOutput, ImageSpec, Observation
from vlatrain.spec import DataSpec
from vlatrain.vlm.vlm_config import history_mode, vlm_config
from vlatrain.vlm.decoding import (generate_cached, generate_uncached, step_features,
                                   trailing_queries)
from vlatrain.vlm.interleaved import interleaved_rows
from vlatrain.vlm.loading import load_model, load_tokenizer, weights_dir
from vlatrain.vlm.sequence import (ACTION, IMAGE, SLOT, STATE, Layout, Piece, Prompt,
                                   step_rows)
from vlatrain.vlm.tuning import add_lora, enable_checkpointing, freeze

LM_LAYOUTS = ("openvla", "robovlms")


def pooled(out) -> Tensor | list | tuple:
    """The image features of a transformers ``get_image_features`` result (output or tensor)."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


class VLMBackbone(nn.Module, abc.ABC):
    """Base class of the adapters. Subclasses set ``default_prompt`` and implement the hooks:

    ``load(path)`` (sets ``self.model``, ``self.tokenizer``, ``self.spec_image``), ``hidden_size``,
    ``input_embeddings()``, ``output_embeddings()``, ``vision_tower()``, ``language_tower()``,
    ``encode_frames(pixels) -> (N, n, D)``, ``image_pieces(frames, step)`` and
    ``run_language_model(embeds, layout, media) -> (R, L, D)``. Adapters that set
    ``supports_kv_cache`` also serve ``run_cached`` and ``positions`` (the cached decoding of
    :mod:`vlatrain.vlm.decoding`).
    """

    default_prompt = "{bos}{image}{instruction}"
    image_token: str | None = None  # the processor's image placeholder (see sequence.Prompt)
    add_special_tokens = False      # whether the processor lets the tokenizer add BOS/EOS
    fuses_history = False
    new_layers: tuple[str, ...] = ()  # name parts of layers added inside the pretrained modules
    needs: tuple[str, ...] = ("config.json",)  # files model.path must hold
    supports_kv_cache = False  # run_cached/positions serve autoregressive decoding with a cache
    position_offset = 0        # position id of a row's first token (see ``positions``)

    def __init__(self, cfg, spec: DataSpec):
        super().__init__()
        self.vcfg = vlm_config(cfg)
        self.mode = history_mode(cfg, self.vcfg)
        self.fuses_history = self.mode == "interleaved"
        if not spec.cameras:
            raise ConfigError([f"model.backbone={cfg.backbone}: a VLM needs at least one camera; "
                               f"set data.cameras"])
        self.cameras = tuple(spec.cameras)
        self.model_cfg = cfg
        self.load(weights_dir(cfg.path, needs=self.needs))
        d = self.feature_dim = int(self.hidden_size)
        std = self._embedding_std()
        self.action_token = nn.Parameter(torch.randn(d) * std)
        self.state_proj = None
        if cfg.use_state and spec.state_dim:
            self.state_proj = nn.Linear(spec.state_dim, d)
            nn.init.normal_(self.state_proj.weight, std=std / spec.state_dim ** 0.5)
            nn.init.zeros_(self.state_proj.bias)
        self.predicts_tokens = cfg.head == "lm"
        self.autoregressive = self.predicts_tokens and self.vcfg.autoregressive
        self.kv_cache = self.autoregressive and self.supports_kv_cache and self.vcfg.kv_cache
        self.n_slots = spec.chunk * spec.action_dim if self.predicts_tokens else 0
        if self.predicts_tokens:
            self.register_buffer("action_ids", self._action_ids(spec), persistent=False)
            self.slots = nn.Parameter(torch.randn(self.n_slots, d) * std)
        self.prompt = Prompt(self.vcfg.prompt or self.default_prompt, self.tokenizer,
                             image_token=self.image_token,
                             add_special_tokens=self.add_special_tokens)
        pad = self.tokenizer.pad_token_id
        self.placeholder = int(pad if pad is not None else 0)
        self._setup_tuning()

    # ---------------------------------------------------------------- adapter hooks
    @abc.abstractmethod
    def load(self, path) -> None:
        """Load the model and tokenizer from ``path``; set ``spec_image``."""

    def load_pretrained(self, cls, path, model_types: tuple[str, ...]) -> None:
        """``self.model`` = ``cls`` from ``path`` (config.json's model_type in ``model_types``),
        in ``model.vlm.dtype``, and ``self.tokenizer`` beside it: the common part of ``load``."""
        self.model = load_model(cls, path, dtype=self.vcfg.dtype,
                                attn_implementation=self.vcfg.attn_implementation,
                                expect=model_types)
        self.tokenizer = load_tokenizer(path)

    # The defaults below fit transformers' *ForConditionalGeneration layout (a ``model`` holding
    # ``vision_tower`` and ``language_model``); adapters whose model differs override them.
    @property
    def hidden_size(self) -> int:
        """D, the language model's hidden size."""
        return self.model.config.text_config.hidden_size

    def input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def output_embeddings(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def vision_tower(self) -> nn.Module:
        """The vision encoder (what ``freeze_vision`` freezes)."""
        return self.model.model.vision_tower

    def language_tower(self) -> nn.Module:
        """The decoder stack without the output layer (what LoRA adapts)."""
        return self.model.model.language_model

    @abc.abstractmethod
    def encode_frames(self, pixels: Tensor):
        """float (N, 3, H, W) -> what ``embed``/``run_language_model`` use: the visual tokens
        (N, n, D) in the LM's embedding space (Flamingo: each step's media latents)."""

    @abc.abstractmethod
    def image_pieces(self, frames: list[int], step: int) -> list[Piece]:
        """The pieces that stand for one step's frames (one per camera) in a sequence."""

    @abc.abstractmethod
    def run_language_model(self, embeds: Tensor, layout: Layout, media) -> Tensor:
        """(R, L, D) input embeddings -> (R, L, D) last hidden states (after the final norm)."""

    def run_cached(self, embeds: Tensor, mask: Tensor, positions: Tensor, cache,
                   prefix: Tensor | None = None) -> Tensor:
        """(R, n, D) embeddings of the next n tokens -> their (R, n, D) last hidden states, their
        keys and values appended to ``cache``. ``mask`` (R, cached + n): every token so far (False:
        padding); ``positions``: the n tokens' position ids, as ``positions`` gives them;
        ``prefix`` (R, n): prompt tokens, given with the first call (PaliGemma's prefix-LM mask).
        The default fits a transformers decoder stack (``language_tower``)."""
        return self.language_tower()(inputs_embeds=embeds, attention_mask=mask.long(),
                                     position_ids=positions, cache=cache,
                                     use_cache=True).last_hidden_state

    def positions(self, layout: Layout) -> Tensor:
        """The position ids ``run_language_model`` gives the layout's tokens, (R, L) or the
        model's own shape (Qwen2-VL: (3, R, L)): by default column + ``position_offset``."""
        r, length = layout.ids.shape
        pos = torch.arange(length, device=layout.ids.device) + self.position_offset
        return pos.repeat(r, 1)

    def new_cache(self):
        """An empty key/value cache for ``run_cached`` (transformers' DynamicCache)."""
        from transformers import DynamicCache
        return DynamicCache(config=self.text_config())

    def unused(self) -> list[nn.Module]:
        """Pretrained modules this policy never runs into its outputs; they are frozen so that
        no optimiser state is kept for them and DDP needs no ``find_unused_parameters``. The
        LM's output layer is one unless ``model.head=lm`` or it is tied to the input embeddings."""
        head = self.output_embeddings()
        tied = head is None or head.weight is self.input_embeddings().weight
        return [] if self.predicts_tokens or tied else [head]

    def pretrained(self) -> list[nn.Module]:
        """The modules whose weights came from ``model.path`` (``lr_scale`` applies to them)."""
        return [self.model]

    # ---------------------------------------------------------------- interface
    def image_spec(self, camera: str) -> ImageSpec:
        return self.spec_image

    def param_groups(self) -> list[dict]:
        """The pretrained parameters at ``model.vlm.lr_scale`` x the learning rate (LoRA's are new)."""
        if self.vcfg.lr_scale == 1.0:
            return []
        seen, params = set(), []
        for m in self.pretrained():
            for name, p in m.named_parameters():
                new = "lora_" in name or any(n in name for n in self.new_layers)
                if p.requires_grad and not new and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return [{"params": params, "lr_scale": self.vcfg.lr_scale}]

    def forward(self, obs: Observation) -> BackboneOutput:
        b, h = obs.mask.shape
        device = obs.mask.device
        exists = obs.mask.bool().clone()
        exists[~exists.any(1), -1] = True  # a window of padding only keeps its last step
        steps = exists.nonzero()  # (S, 2): (b, t) of the steps that go through the VLM
        instr = list(obs.instruction or [""] * b)
        if len(instr) != b:
            raise ValueError(f"observation has {len(instr)} instructions for a batch of {b}")
        rows_fn = interleaved_rows if self.fuses_history else step_rows
        args = (steps.cpu(),) + ((b,) if self.fuses_history else ())
        rows = rows_fn(*args, instr, len(self.cameras), self.prompt, self.image_pieces,
                       self.state_proj is not None, self.n_slots)
        layout = Layout.build(rows, self.placeholder).to(device)
        pixels = torch.stack([obs.images[c][steps[:, 0], steps[:, 1]] for c in self.cameras],
                             dim=1).flatten(0, 1)  # (S*cams, 3, H, W), frame s*cams + c
        media = self.encode_frames(pixels)
        flat = steps[:, 0] * h + steps[:, 1]  # (S,) index of each step in (B*h)
        teacher = None
        if self.autoregressive and obs.action_tokens is not None:
            teacher = obs.action_tokens[steps[:, 0], steps[:, 1]].long()  # (S, c*A) bins
        elif self.autoregressive:
            return self.generate(layout, media, obs, steps, flat, b, h)
        embeds = self.embed(layout, media, obs, steps, teacher)
        hidden = self.run_language_model(embeds, layout, media)  # (R, L, D)
        feats = step_features(hidden, layout, flat, b * h)
        out = BackboneOutput(features=feats.view(b, h, -1).float(), mask=obs.mask)
        if self.predicts_tokens:
            out.lm_logits = self.action_logits(hidden, layout, flat, b * h).view(
                b, h, self.n_slots, -1)
        return out

    def generate(self, layout: Layout, media, obs: Observation, steps: Tensor, flat: Tensor,
                 b: int, h: int) -> BackboneOutput:
        """Greedy autoregressive decoding of the action tokens, with the key/value cache when
        ``self.kv_cache`` and the action queries end every row; the returned ``lm_logits`` hold,
        for each query, the logits its token was chosen from."""
        cached = self.kv_cache and trailing_queries(layout, self.n_slots)
        run = generate_cached if cached else generate_uncached
        return run(self, layout, media, obs, steps, flat, b, h)

    # ---------------------------------------------------------------- pieces
    def embed(self, layout: Layout, media, obs: Observation, steps: Tensor,
              teacher: Tensor | None = None) -> Tensor:
        """(R, L, D) input embeddings: text ids, then every other kind put in its place;
        ``teacher`` (S, c*A): the bins whose embeddings enter the next action queries."""
        emb = self.input_embeddings()(layout.ids)
        dt = emb.dtype
        r, c = layout.where(IMAGE)
        if len(r):
            emb = emb.index_put((r, c), media[layout.ref[r, c], layout.sub[r, c]].to(dt))
        r, c = layout.where(STATE)
        if len(r):
            if obs.state is None:
                raise ValueError("the backbone was built with model.use_state but the observation "
                                 "has no state")
            st = self.state_proj(obs.state[steps[:, 0], steps[:, 1]].float())  # (S, D)
            emb = emb.index_put((r, c), st[layout.ref[r, c]].to(dt))
        r, c = layout.where(ACTION)
        emb = emb.index_put((r, c), self.action_token.to(dt).expand(len(r), -1))
        if self.predicts_tokens:
            r, c = layout.where(SLOT)
            sub = layout.sub[r, c]
            prev = None
            if teacher is not None:
                prev = teacher[layout.ref[r, c], (sub - 1).clamp(min=0)]
            emb = emb.index_put((r, c), self.query_embeds(sub, prev).to(dt))
        return emb

    def query_embeds(self, sub: Tensor, prev: Tensor | None) -> Tensor:
        """(N, D) inputs of action queries ``sub`` (N,) (their index in the chunk); autoregressive:
        ``prev`` (N,) the bin of the token before each, whose embedding query j > 0 also reads."""
        x = self.slots[sub]
        if prev is not None:
            tok = self.input_embeddings()(self.action_ids[prev]).to(x.dtype)
            x = x + torch.where((sub > 0)[:, None], tok, torch.zeros_like(tok))
        return x

    def head_logits(self, x: Tensor) -> Tensor:
        """(N, D) last hidden states -> (N, K) float logits over the K action-token ids."""
        head = self.output_embeddings()
        w = head.weight[self.action_ids]  # (K, D)
        bias = head.bias[self.action_ids] if getattr(head, "bias", None) is not None else None
        logits = F.linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype)).float()
        cap = getattr(self.text_config(), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def action_logits(self, hidden: Tensor, layout: Layout, flat: Tensor, n: int) -> Tensor:
        """(n, c*A, K) float logits of the action queries over the K action-token ids."""
        r, c = layout.where(SLOT)
        logits = self.head_logits(hidden[r, c])
        out = logits.new_zeros(n, self.n_slots, logits.shape[-1])
        return out.index_put((flat[layout.ref[r, c]], layout.sub[r, c]), logits)

    def text_config(self):
        cfg = self.model.config
        return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    def vision_dtype(self) -> torch.dtype:
        return next(self.vision_tower().parameters()).dtype

    # ---------------------------------------------------------------- set-up
    def _embedding_std(self) -> float:
        """The scale of the LM's input embeddings (as they enter the LM, scaling included)."""
        emb = self.input_embeddings()
        n = min(emb.weight.shape[0], 4096)
        with torch.no_grad():
            x = emb(torch.arange(n, device=emb.weight.device)).float()
        return float(x.std()) or 0.02

    def _action_ids(self, spec: DataSpec) -> Tensor:
        """The vocabulary id of each bin's action token (see the module docstring)."""
        if spec.n_bins < 2:
            raise ConfigError(["model.head=lm needs the store's action tokenizer "
                               "(info['tokenizer']); this store records none"])
        vocab = int(self.tokenizer.vocab_size)
        rows = int(self.output_embeddings().weight.shape[0])
        tok = (spec.extra or {}).get("tokenizer") or {}
        layout = tok.get("layout")
        if layout in LM_LAYOUTS:
            if tok.get("vocab_size") != vocab:
                raise ConfigError([f"model.head=lm: the store's action tokens use the {layout} "
                                   f"layout of a vocabulary of {tok.get('vocab_size')} tokens, "
                                   f"this model's tokenizer has {vocab}; use a store tokenised "
                                   f"for this model (vocab_size={vocab}) or with vladata's "
                                   f"default offset layout"])
            ids = list(spec.token_ids)
        else:
            ids = [vocab - 1 - k for k in range(spec.n_bins)]
        if min(ids) < 0 or max(ids) >= rows:
            raise ConfigError([f"model.head=lm: the ids of the store's {spec.n_bins} action bins, "
                               f"{min(ids)}..{max(ids)}, do not fit the LM head's {rows} outputs"])
        return torch.tensor(ids, dtype=torch.long)

    def _setup_tuning(self) -> None:
        v = self.vcfg
        for m in self.unused():
            freeze(m)
        if v.freeze_vision:
            freeze(self.vision_tower())
        if v.freeze_language or v.lora:
            for m in (self.language_tower(), self.input_embeddings(), self.output_embeddings()):
                freeze(m)
        if v.lora:
            add_lora(self.language_tower(), v.lora_r, v.lora_alpha, v.lora_dropout,
                     exclude=self.new_layers)
        for m in self.pretrained():
            for name, p in m.named_parameters():
                if any(n in name for n in self.new_layers):
                    p.requires_grad_(True)  # new layers inside a frozen tower still train
        if v.grad_checkpointing:
            for m in self.pretrained():
                enable_checkpointing(m)
