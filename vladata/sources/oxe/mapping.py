"""Which canonical features an OXE dataset gets, and from which serialized keys.

:func:`build_mapping` turns the parsed ``features.json`` leaves and (when standardising) the
dataset's :class:`~vladata.sources.oxe.standardize.OxeConfig` into an ordered
``{feature name: Output}``. The naming rules:

standardised (dataset in the table)
    ``observation.images.<role>``, ``observation.depth.<role>``, ``observation.state``,
    ``action`` (7-d EEF + gripper, 1 = open), ``action.raw`` (every numeric leaf under
    ``steps/action`` flattened and concatenated in features.json order; the names say which
    value is which), other cameras as ``observation.images.<key>``, other numeric observation
    leaves as ``observation.raw.<key>``, other numeric step leaves (``reward``, ``discount``,
    ``is_terminal``, ``action_dict.*``) by their key with ``/`` -> ``.``; ``is_first`` and
    ``is_last`` are implied by the episode boundaries and dropped.
raw (``standardize=False`` or a dataset not in the table)
    cameras as ``observation.images.<key>``, every numeric step leaf by its key with
    ``/`` -> ``.`` (so a flat ``steps/action`` is ``action``).

In both, floats become float32 (float64 is stored as float32 anyway), bool and integers keep
their dtype, a scalar becomes shape (1,), a uint16 one-channel image (depth PNG) becomes a
float32 ``observation.depth.<key>``. Text leaves are not frames: the instruction becomes the
language segments, other text the episode metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vladata.episode import FeatureSpec
from vladata.errors import SourceFormatError
from vladata.sources.oxe.standardize import ACTION_NAMES, ROLES, OxeConfig, state_vector
from vladata.sources.oxe.tfds import Leaf
from vladata.store.layout import IMAGE_PREFIX, STATE


@dataclass(frozen=True)
class Output:
    """How one canonical feature is produced: ``how`` is image | depth | tensor | concat |
    state | action, from the step ``keys`` (relative to a step)."""

    spec: FeatureSpec
    how: str
    keys: tuple[str, ...] = ()


def _dotted(rel: str) -> str:
    return rel.replace("/", ".")


def _obs_key(rel: str) -> str:
    return rel[len("observation/"):] if rel.startswith("observation/") else rel


def _tensor_spec(lf: Leaf, desc: str) -> FeatureSpec:
    dtype = "float32" if lf.dtype in ("float16", "bfloat16", "float32", "float64") else lf.dtype
    shape = lf.shape or (1,)
    kind = "lowdim" if len(shape) == 1 else "other"
    return FeatureSpec(dtype=dtype, shape=shape, kind=kind,
                       source_dtype=lf.dtype if lf.dtype != dtype else None,
                       description=desc or lf.description)


def _image_output(lf: Leaf, name_if_rgb: str, name_if_depth: str) -> tuple[str, Output]:
    h, w, c = lf.shape
    if lf.dtype == "uint8":
        return name_if_rgb, Output(FeatureSpec("uint8", lf.shape, "image",
                                               description=lf.description or lf.key), "image",
                                   (lf.rel,))
    if lf.dtype == "uint16" and c == 1:
        return name_if_depth, Output(FeatureSpec("float32", (h, w), "depth", source_dtype="uint16",
                                                 description=lf.description or lf.key), "image",
                                     (lf.rel,))
    raise SourceFormatError(f"images of dtype {lf.dtype} with {c} channel(s) are not supported",
                            key=lf.key)


def _tensor_output(lf: Leaf, name: str) -> Output:
    if lf.size < 0:
        raise SourceFormatError(f"step tensors of dynamic shape {lf.shape} are not supported",
                                key=lf.key)
    return Output(_tensor_spec(lf, lf.description), "tensor", (lf.rel,))


def build_mapping(leaves: list[Leaf], cfg: OxeConfig | None, *, skip: set[str] = frozenset()
                  ) -> dict[str, Output]:
    """The ordered feature mapping (see the module docstring). ``cfg=None``: raw mode.

    ``skip``: step keys not to turn into frames (e.g. the language codes when standardising).
    """
    steps = [lf for lf in leaves if lf.in_steps and lf.rel not in skip]
    by_rel = {lf.rel: lf for lf in steps}
    out: dict[str, Output] = {}

    def add(name: str, o: Output) -> None:
        if name in out:
            raise SourceFormatError(f"two keys map to the feature {name!r}", key=o.keys[0])
        out[name] = o

    if cfg is None:
        for lf in steps:
            if lf.kind == "image":
                k = _dotted(_obs_key(lf.rel))
                add(*_image_output(lf, IMAGE_PREFIX + k, f"observation.depth.{k}"))
            elif lf.kind == "tensor":
                add(_dotted(lf.rel), _tensor_output(lf, _dotted(lf.rel)))
        return out

    used: set[str] = set()
    for role in ROLES:
        if role in cfg.cameras:
            rel = f"observation/{cfg.cameras[role]}"
            lf = by_rel[rel]
            add(*_image_output(lf, IMAGE_PREFIX + role, f"observation.depth.{role}"))
            used.add(rel)
    for role in ROLES:
        if role in cfg.depth:
            rel = f"observation/{cfg.depth[role]}"
            lf = by_rel[rel]
            if lf.kind == "image":
                name, o = _image_output(lf, "", f"observation.depth.{role}")
                if not name:
                    raise SourceFormatError("a depth camera must be a float tensor or a "
                                            "one-channel uint16 image", key=lf.key)
                add(name, o)
            else:
                shape = lf.shape[:2] if len(lf.shape) == 3 and lf.shape[2] == 1 else lf.shape
                if len(shape) != 2 or lf.size < 0:
                    raise SourceFormatError(f"depth must be (H, W) or (H, W, 1), got {lf.shape}",
                                            key=lf.key)
                add(f"observation.depth.{role}",
                    Output(FeatureSpec("float32", shape, "depth", source_dtype=lf.dtype
                                       if lf.dtype != "float32" else None,
                                       description=lf.description or lf.key), "depth", (rel,)))
            used.add(rel)
    state_keys = tuple(dict.fromkeys(p[0] for p in cfg.state if p is not None))
    add(STATE, Output(FeatureSpec("float32", (len(cfg.state_names),), "lowdim",
                                                names=cfg.state_names,
                                                description=f"proprio ({cfg.state_encoding})"),
                                    "state", state_keys))
    add("action", Output(FeatureSpec("float32", (7,), "lowdim", names=ACTION_NAMES,
                                     description=f"{cfg.action_encoding}; gripper 1 = open, "
                                                 "0 = closed"), "action"))
    action_leaves = [lf for lf in steps if lf.rel == "action" or lf.rel.startswith("action/")]
    if action_leaves:
        names, keys = [], []
        for lf in action_leaves:
            if lf.kind != "tensor" or lf.size < 0:
                raise SourceFormatError("action.raw takes numeric leaves of static shape only",
                                        key=lf.key)
            sub = lf.rel[len("action/"):] if lf.rel != "action" else "action"
            names += [sub] if lf.size == 1 else [f"{sub}.{j}" for j in range(lf.size)]
            keys.append(lf.rel)
        src = sorted({lf.dtype for lf in action_leaves} - {"float32"})
        spec = FeatureSpec("float32", (len(names),), "lowdim", names=names,
                           source_dtype=",".join(src) or None,
                           description="the raw action, flattened and concatenated in "
                                       "features.json order")
        add("action.raw", Output(spec, "concat", tuple(keys)))
        used |= set(keys)
    for lf in steps:
        if lf.rel in used or lf.rel in ("is_first", "is_last"):
            continue
        if lf.kind == "image":
            k = _dotted(_obs_key(lf.rel))
            add(*_image_output(lf, IMAGE_PREFIX + k, f"observation.depth.{k}"))
        elif lf.kind == "tensor":
            name = (f"observation.raw.{_dotted(_obs_key(lf.rel))}"
                    if lf.rel.startswith("observation/") else _dotted(lf.rel))
            add(name, _tensor_output(lf, name))
    return out


def check_transform(leaves: list[Leaf], cfg: OxeConfig, dataset: str, file: object) -> None:
    """Run the table entry on a zero episode shaped like features.json: a key the entry needs
    and the file lacks is reported now, not halfway through a conversion."""
    by_rel = {lf.rel: lf for lf in leaves if lf.in_steps}
    missing = sorted(k for k in cfg.needed_keys() if k not in by_rel)
    if missing:
        raise SourceFormatError(f"the OXE table entry for {dataset!r} needs step keys {missing} "
                                f"that features.json does not have (it has "
                                f"{sorted(by_rel)})", file=file)
    T = 3
    dummy = {rel: np.zeros((T, *(lf.shape if lf.size >= 0 else (1,))),
                           np.float32 if lf.kind == "tensor" else object)
             for rel, lf in by_rel.items()}
    try:
        a = np.asarray(cfg.action(dummy))
    except KeyError as e:
        raise SourceFormatError(f"the OXE table's action transform for {dataset!r} needs step key "
                                f"{e} that features.json does not have (it has {sorted(by_rel)})",
                                file=file) from None
    if a.shape != (T, 7):
        raise SourceFormatError(f"the OXE table's action transform for {dataset!r} returned shape "
                                f"{a.shape[1:]} per step, expected (7,)", file=file)
    s = state_vector(cfg, dummy, T)
    if s.shape != (T, len(cfg.state_names)):
        raise SourceFormatError(f"the OXE table's state parts for {dataset!r} give {s.shape[1]} "
                                f"values per step, but it names {len(cfg.state_names)} (a slice "
                                "runs past its key's size?)", file=file)
