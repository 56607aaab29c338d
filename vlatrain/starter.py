"""``vlatrain init``: a commented config fitted to one store, ready to train without edits.

The data section is read from the store itself: its RGB cameras, the state dimensions by name,
the action layout and gripper convention (comments: they are the store's, not settings), the
splits present (a validation split if there is one, else ``data.val_fraction`` holds out a
tenth of the training episodes), the language the store carries (stored sentence embeddings,
instruction text, or none), windows over language segments when every episode has one, and a
batch size the training split can fill. The other sections come from a preset:

- ``one-step``: the embedded tiny backbone, one observation step per window (RoboVLMs'
  one-step modelling), a GPT head over the action chunk;
- ``history``: the same with 4 observation steps fused by the head (history modelling);
- ``vlm``: a pretrained VLM backbone (PaliGemma; weights from ``model.path``, docs/vlm.md),
  one camera at 224 pixels, bf16.

The text is checked by loading it back (:func:`vlatrain.config.load_config`) and against the
store (:func:`vlatrain.preflight.check_run`) before it is written, so what ``init`` writes
trains.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import yaml

from vladata.normalize import Normalization
from vladata.store.layout import ACTION, IMAGE_PREFIX, STATE
from vlatrain import preflight
from vlatrain.config import Config
from vlatrain.data import held_out
from vlatrain.errors import StoreMismatchError

PRESETS = ("one-step", "history", "vlm")
VAL_NAMES = ("validation", "val", "valid", "test")  # split names taken as validation, in order
VAL_FRACTION = 0.1
_MODEL = {"one-step": (1, 32), "history": (4, 32), "vlm": (8, 8)}  # preset -> (history, batch cap)


def _v(value) -> str:
    """A value as one line of YAML (flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def _line(key: str, value, comment: str = "", indent: int = 2) -> str:
    text = " " * indent + f"{key}: {_v(value)}"
    if comment and len(text) + len(comment) > 96:  # a long line: the comment above it
        return " " * indent + f"# {comment}\n{text}"
    return f"{text:<29} # {comment}" if comment else text


def facts(ds) -> dict:
    """What a config needs to know about the store ``ds``."""
    feats = ds.info["features"]
    cams = [k[len(IMAGE_PREFIX):] for k, f in feats.items()
            if f.get("kind") == "image" and k.startswith(IMAGE_PREFIX)
            and len(f["shape"]) == 3 and f["shape"][2] == 3]
    eps = ds.episodes
    splits = {s: (int(n), int(fr)) for s, n, fr in eps.group_by("split", maintain_order=True)
              .agg(pl.len(), pl.col("length").sum()).iter_rows()}
    train = "train" if "train" in splits else max(splits, key=lambda s: splits[s][0])
    val = next((s for s in VAL_NAMES if s in splits and s != train), None)
    seg = ds.segments
    embeddings = "embedding" in seg.columns and any(e is not None for e in seg["embedding"].to_list())
    instructions = [i for i in seg["instruction"].to_list() if i] if seg.height else []
    with_segment = set(seg["episode_index"].to_list()) if seg.height else set()
    every_episode = bool(seg.height) and set(eps["episode_index"].to_list()) <= with_segment
    state = feats.get(STATE)
    act = feats[ACTION]
    a_dim = int(act["shape"][0])
    return {
        "path": ds.path, "source": ds.info.get("source"), "fps": ds.info.get("fps"),
        "cameras": cams, "camera_shapes": {c: tuple(feats[IMAGE_PREFIX + c]["shape"]) for c in cams},
        "state_names": (list(state.get("names") or range(int(state["shape"][0])))
                        if state else None),
        "action_names": list(act.get("names") or (f"a{i}" for i in range(a_dim))),
        "normalization": ds.info.get("normalization"),
        "gripper_meaning": (ds.info.get("source_info") or {}).get("gripper_meaning"),
        "splits": splits, "train_split": train, "val_split": val,
        "language": "embedding" if embeddings else ("text" if instructions else "none"),
        "tasks": len(set(instructions)),
        "over": "segments" if every_episode else "episodes",
    }


def fitted_config(ds, preset: str = "one-step", out: str | None = None) -> str:
    """The commented YAML config of ``preset`` for the store ``ds`` (checked before returning)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    f = facts(ds)
    history, cap = _MODEL[preset]
    vlm = preset == "vlm"
    cams = f["cameras"][:1] if vlm else f["cameras"]
    data = {"path": str(ds.path), "history": history, "chunk": 10,
            "cameras": cams or None, "over": f["over"], "train_split": f["train_split"],
            "val_split": f["val_split"] or "held-out",
            "val_fraction": None if f["val_split"] else VAL_FRACTION, "batch_size": cap}
    probe = Config.from_dict({"data": data, "model": {"history": "one-step" if history == 1
                                                      else "history"}})
    train_eps = None
    if f["val_split"] is None:
        train_eps = held_out(ds, probe.data)[0]
    n_train = preflight.window_count(ds, probe.data, f["train_split"], train_eps)
    data["batch_size"] = max(1, min(cap, 1 << max(0, n_train.bit_length() - 1)))
    text = "\n".join(_header(f, preset, out) + _data_lines(f, data, vlm)
                     + _rest_lines(f, preset, f"runs/{Path(ds.path).stem}")) + "\n"
    cfg = Config.from_dict(yaml.safe_load(text))
    if vlm:
        _check_data(ds, cfg)
    else:
        preflight.check_run([(ds, 1.0)], cfg)
    return text


def _check_data(ds, cfg) -> None:
    """The data checks of a VLM config (its backbone needs weights that are not here)."""
    errors = preflight.store_errors(ds, cfg, splits={"data.train_split": cfg.data.train_split},
                                    cameras=cfg.data.cameras)
    errors += preflight.window_errors([(ds, 1.0)], cfg)
    if errors:
        raise StoreMismatchError(errors)


def _header(f: dict, preset: str, out: str | None) -> list[str]:
    splits = ", ".join(f"{s} ({n} episodes, {fr:,} frames)" for s, (n, fr) in f["splits"].items())
    name = out or "config.yaml"
    lines = [f"# vlatrain config fitted to the store {f['path']}",
             f"#   written by `vlatrain init {f['path']}{f' -o {out}' if out else ''} "
             f"--preset {preset}`",
             f"# source {f['source']}, {f['fps']:g} fps; splits: {splits}",
             "# Train:   vlatrain run " + name + " [train.steps=...] [out=runs/NAME]",
             "# Any key can be overridden on the command line as section.key=value;",
             "# `vlatrain run` checks the config against the store before step 1."]
    if preset == "vlm":
        lines.append("# The VLM preset needs pretrained weights: set model.path=DIR (docs/vlm.md).")
    return lines


def _data_lines(f: dict, data: dict, vlm: bool) -> list[str]:
    L = ["", "data:",
         _line("path", data["path"], "the store (override with data.path=STORE)"),
         _line("history", data["history"], "observation steps per window (1 = one-step modelling)"),
         _line("chunk", data["chunk"], "future actions predicted per step")]
    shapes = ", ".join(f"{c} {'x'.join(map(str, s))}" for c, s in f["camera_shapes"].items())
    if data["cameras"]:
        L.append(_line("cameras", data["cameras"], f"RGB cameras of the store: {shapes}"))
    else:
        L.append(_line("cameras", None, "the store has no RGB camera: state only"))
    if f["state_names"] is not None:
        L.append(f"{'  state_dims:':<29} # {STATE} dims fed to the model: delete a line to drop one")
        L += [f"{f'    - {i}':<29} # {n}" for i, n in enumerate(f["state_names"])]
    L += _action_comments(f)
    over_why = ("every episode has language segments: windows stay inside one instruction"
                if data["over"] == "segments" else
                "not every episode has a language segment: windows over whole episodes")
    L.append(_line("over", data["over"], over_why))
    L.append(_line("train_split", data["train_split"], "splits: " + ", ".join(f["splits"])))
    if data["val_fraction"] is None:
        L.append(_line("val_split", data["val_split"], "validation (and `vlatrain eval`) split"))
    else:
        L.append(_line("val_split", data["val_split"], "the store has no validation split: this "
                       "names the held-out episodes"))
        L.append(_line("val_fraction", data["val_fraction"], f"{data['train_split']!r} episodes "
                       "held out to validate on (the same ones every run)"))
    L.append(_line("batch_size", data["batch_size"], "per process; at most the training windows "
                   "allow"))
    L.append(_line("num_workers", 2, "loader worker processes"))
    L.append("  augment:")
    L.append(_line("shift", 10 if vlm else 4, "random shift (pixels), one per window", 4))
    for k in ("brightness", "contrast", "saturation"):
        L.append(_line(k, 0.0 if vlm else 0.1, "", 4))
    L.append(_line("action_noise", 0.0, "", 4))
    return L


def _action_comments(f: dict) -> list[str]:
    """The action layout and gripper convention, as comments: they are the store's."""
    names, norm = f["action_names"], f["normalization"] or {}
    grip = (norm.get("gripper") or {})
    gdim = grip.get("dim")
    gdim = None if gdim is None else gdim % len(names)
    lines = [f"  # action ({len(names)} dims, from the store): " + ", ".join(names)]
    mode = Normalization.from_dict(norm).mode if norm else "none"
    lines.append(f"  #   normalised with {mode} statistics ({norm.get('low', '')}/"
                 f"{norm.get('high', '')}) of split {f['train_split']!r}; metrics are in the "
                 "store's units")
    if gdim is not None:
        lines.append(f"  #   dim {gdim} ({names[gdim]}) is the gripper: stored closed/open = "
                     f"{grip.get('source')}, trained as {grip.get('target')} with BCE "
                     "(train.gripper_weight)")
    else:
        lines.append("  #   no binary gripper dimension: every dim is regressed")
    meaning = f["gripper_meaning"]
    if meaning and meaning != "unknown":
        lines.append(f"  #   the source says: {meaning}")
    return lines


def _rest_lines(f: dict, preset: str, out: str) -> list[str]:
    vlm, lang = preset == "vlm", f["language"]
    lang_why = {"embedding": "the store's sentence embeddings of each instruction",
                "text": f"instruction text ({f['tasks']} distinct), a small hashed text encoder",
                "none": "the store has no instructions"}[lang]
    model = [_line("backbone", "paligemma" if vlm else "tiny",
                   "a pretrained VLM (docs/vlm.md)" if vlm else "the embedded small "
                   "vision-language backbone (trains on a CPU)"),
             *([_line("path", None, "local weights directory: set model.path=DIR")] if vlm else []),
             _line("head", "gpt", "fc | lstm | gpt | discrete"),
             _line("history", "one-step" if preset == "one-step" else "history",
                   "one-step | history (the head fuses data.history steps)"),
             _line("language", "text" if vlm else lang,
                   "the VLM reads the instruction itself" if vlm else lang_why),
             _line("use_state", f["state_names"] is not None and not vlm,
                   f"feed {STATE} (normalised with the store's mean/std)"),
             _line("image_size", 224 if vlm else 64, "frames are resized to this on the device"),
             *([] if vlm else [_line("width", 128, "feature width of the backbone")]),
             _line("hidden", 512 if vlm else 256, "head width"),
             _line("layers", 2, "head depth"),
             _line("heads", 8 if vlm else 4, "attention heads of the GPT head"),
             _line("dropout", 0.0)]
    steps = 50_000 if vlm else 1000
    every = 1000 if vlm else 250
    return (["", f"out: {_v(out)}", "", "model:"] + model
            + ["", "optim:", _line("lr", 2e-5 if vlm else 1e-3), _line("weight_decay", 0.0 if vlm else 0.01),
               _line("grad_clip", 1.0), _line("schedule", "cosine"),
               _line("warmup_steps", 500 if vlm else 20), _line("min_lr_ratio", 0.1),
               "", "train:", _line("steps", steps, "optimiser steps"), _line("seed", 0),
               _line("precision", "bf16" if vlm else "fp32", "fp32 | bf16 | fp16 (CUDA)"),
               _line("device", "auto", "cuda if available, else cpu"),
               _line("loss", "mse"), _line("gripper_weight", 0.1),
               _line("checkpoint_every", every), _line("keep_last", 2),
               "", "eval:", _line("every", every, "steps between validations"),
               _line("batches", 50, "validation batches per evaluation (null: the whole split)"),
               _line("batch_size", 64), _line("best_metric", "val/arm_mae", "picks best.pt"),
               "", "log:", _line("every", 10), _line("tensorboard", True), _line("progress", True)])
