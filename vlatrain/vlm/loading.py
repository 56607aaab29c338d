"""Loading a VLM from a local directory, and nothing else: no hub, no network, no remote code.

A weights directory is what ``save_pretrained`` writes (and what ``huggingface-cli download``
or ``git clone`` of a model repository leaves): ``config.json``, the weights
(``*.safetensors``), the tokenizer files and the image processor's settings
(``preprocessor_config.json``, or ``processor_config.json`` as transformers 5 saves them). Every load passes
``local_files_only=True`` and ``trust_remote_code=False``; a directory that is missing a piece
raises :class:`WeightsError` naming the directory, the file and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vladata.errors import VladataError
from vlatrain.model.backbone import ImageSpec

DOCS = "docs/vlm.md"


class WeightsError(VladataError, ValueError):
    """A local weights directory is missing, incomplete, or holds another architecture."""


def weights_dir(path, what: str = "model.path", *, needs=("config.json",)) -> Path:
    """``path`` as a directory holding ``needs``; raises :class:`WeightsError` otherwise."""
    if not path:
        raise WeightsError(f"{what} is not set: point it at a local directory with the model's "
                           f"weights (see {DOCS} for how to download them)")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise WeightsError(f"{what}={path}: not a directory; VLM weights are loaded from a local "
                           f"directory only (see {DOCS})")
    for name in needs:
        if not (p / name).is_file():
            raise WeightsError(f"{p}: no {name}; expected a directory written by save_pretrained "
                               f"or downloaded from the model's repository (see {DOCS})")
    return p


def model_type(path: Path) -> str:
    try:
        return str(json.loads((path / "config.json").read_text()).get("model_type", ""))
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path / 'config.json'}: unreadable ({e})") from None


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def load_model(cls, path: Path, *, dtype: str = "float32", attn_implementation: str | None = None,
               expect: tuple[str, ...] = ()):
    """``cls.from_pretrained(path)`` from local files only, in ``dtype``, in training mode.

    ``expect`` lists the ``model_type`` values of config.json this class can load; another
    architecture raises :class:`WeightsError` before any weight is read, and so does a
    checkpoint that lacks some of the model's weights (transformers would initialise them at
    random with only a log line). Weights in the checkpoint that the class does not use (the
    text half of a whole CLIP model loaded as a vision tower) are fine.
    """
    found = model_type(path)
    if expect and found not in expect:
        raise WeightsError(f"{path}: config.json says model_type={found!r}, expected "
                           f"{' or '.join(map(repr, expect))}; is model.backbone right?")
    kwargs = {"local_files_only": True, "trust_remote_code": False, "dtype": torch_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model, info = cls.from_pretrained(str(path), output_loading_info=True, **kwargs)
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot load {cls.__name__}: {e}") from e
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # transformers would start these from random values: never train on that unawares
        raise WeightsError(f"{path}: {len(missing)} weights of {cls.__name__} are not in the "
                           f"checkpoint (e.g. {', '.join(missing[:4])}); wrong or partial download?")
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model.train()


def load_tokenizer(path: Path):
    """The tokenizer saved in ``path`` (``AutoTokenizer``, local files only)."""
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                             trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot load the tokenizer: {e}") from e


def read_preprocessor(path: Path) -> dict:
    """The image processor's settings: ``preprocessor_config.json``, or the ``image_processor``
    section of ``processor_config.json`` (where transformers 5 saves a whole processor)."""
    for name, section in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        f = path / name
        if not f.is_file():
            continue
        try:
            d = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise WeightsError(f"{f}: not valid JSON ({e})") from None
        if section is not None:
            if not isinstance(d.get(section), dict):
                continue
            d = d[section]
        for key in ("image_mean", "image_std"):
            v = d.get(key)
            if not (isinstance(v, list) and len(v) == 3):
                raise WeightsError(f"{f}: {key} must be a list of 3 numbers, got {v!r}")
        return d
    raise WeightsError(f"{path}: no preprocessor_config.json (the image processor's settings: "
                       f"resolution, mean, std); copy it from the model's repository")


def image_spec(path: Path, size: int | tuple[int, int]) -> ImageSpec:
    """The frames' resolution (the vision tower's) and the processor's mean/std."""
    d = read_preprocessor(path)
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return ImageSpec(size=(int(hw[0]), int(hw[1])), mean=tuple(float(x) for x in d["image_mean"]),
                     std=tuple(float(x) for x in d["image_std"]))


def token_id(tokenizer, token: str, path: Path) -> int:
    """The id of ``token``, which must be in the vocabulary (not the unknown token)."""
    i = tokenizer.convert_tokens_to_ids(token)
    if i is None or (tokenizer.unk_token_id is not None and i == tokenizer.unk_token_id
                     and token != tokenizer.unk_token):
        raise WeightsError(f"{path}: the tokenizer has no {token!r} token, which this model's "
                           f"prompt format needs; is this the model's own tokenizer?")
    return int(i)
