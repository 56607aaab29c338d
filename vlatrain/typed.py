"""Typed dataclasses from plain dicts and ``key=value`` overrides, collecting every error.

:func:`build` makes a (nested) dataclass from a dict, checking each value against the field's
annotation (``int``, ``float``, ``bool``, ``str``, ``Optional[...]``, ``list[...]``, nested
dataclasses) and its ``choices`` metadata (:func:`choice`); :func:`apply_overrides` sets dotted
keys from command-line text. Neither raises: both append ``"<key>: <problem>"`` messages to an
``errors`` list, so a caller reports every problem at once. Unknown keys name the closest known.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

import yaml

from vladata.errors import ConfigError


def choice(*options) -> dict:
    """Field metadata: the value must be one of ``options``."""
    return {"choices": options}


def _unwrap_optional(tp) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _type_name(tp) -> str:
    inner, opt = _unwrap_optional(tp)
    name = getattr(inner, "__name__", str(inner)) if typing.get_origin(inner) is None else str(inner)
    return f"{name} or null" if opt else name


def _coerce(value, tp, key: str, errors: list[str]):
    """``value`` as type ``tp``, or append an error naming ``key`` and return a sentinel."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        errors.append(f"{key}: expected {_type_name(tp)}, got null")
        return _BAD
    if typing.get_origin(inner) is list:
        (elem,) = typing.get_args(inner)
        if not isinstance(value, (list, tuple)):
            errors.append(f"{key}: expected a list of {elem.__name__}, got {value!r}")
            return _BAD
        if dataclasses.is_dataclass(elem):  # a list of sections, e.g. data.mixture entries
            n = len(errors)
            out = [build(elem, elem.from_value(v) if hasattr(elem, "from_value") else v,
                         f"{key}[{i}].", errors) for i, v in enumerate(value)]
            return _BAD if len(errors) > n else out
        out = [_coerce(v, elem, f"{key}[{i}]", errors) for i, v in enumerate(value)]
        return _BAD if any(v is _BAD for v in out) else out
    if inner is bool:
        if isinstance(value, bool):
            return value
    elif inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif inner is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    errors.append(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return _BAD


_BAD = object()


def _check_choice(f: dataclasses.Field, value, key: str, errors: list[str]) -> None:
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        errors.append(f"{key}: expected one of {', '.join(map(str, choices))}, got {value!r}")


def _unknown(key: str, known: list[str]) -> str:
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
    return f"{key}: unknown key{hint}"


def build(cls, d, prefix: str, errors: list[str]):
    """``cls`` from the dict ``d``; problems go to ``errors`` (the field keeps its default)."""
    if not isinstance(d, dict):
        errors.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {d!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in d:
        if k not in fields:
            errors.append(_unknown(f"{prefix}{k}", list(fields)))
    kwargs = {}
    for name, f in fields.items():
        if name not in d:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, d[name], f"{prefix}{name}.", errors)
            continue
        v = _coerce(d[name], tp, prefix + name, errors)
        if v is not _BAD:
            _check_choice(f, v, prefix + name, errors)
            kwargs[name] = v
    return cls(**kwargs)


def parse_overrides(args: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["train.steps=300", "out=runs/x"]`` -> ``{"train.steps": "300", "out": "runs/x"}``."""
    out, errors = {}, []
    for a in args:
        key, eq, value = a.partition("=")
        if not eq or not key.strip():
            errors.append(f"{a!r}: an override is key=value, e.g. train.steps=300")
            continue
        out[key.strip()] = value
    if errors:
        raise ConfigError(errors)
    return out


def apply_overrides(cfg, overrides: dict[str, str], errors: list[str]) -> None:
    """Set ``section.key=value`` strings on ``cfg`` in place, appending problems to ``errors``."""
    for key, text in overrides.items():
        obj, parts = cfg, key.split(".")
        for i, part in enumerate(parts):
            fields = {f.name: f for f in dataclasses.fields(obj)}
            if part not in fields:
                errors.append(_unknown(".".join(parts[:i + 1]), list(fields)))
                break
            tp = typing.get_type_hints(type(obj))[part]
            if i < len(parts) - 1:
                if not dataclasses.is_dataclass(tp):
                    errors.append(f"{key}: {'.'.join(parts[:i + 1])} is a value, not a section")
                    break
                obj = getattr(obj, part)
                continue
            if dataclasses.is_dataclass(tp):
                errors.append(f"{key}: is a section; set one of its keys "
                              f"({', '.join(f.name for f in dataclasses.fields(tp))})")
                break
            inner, optional = _unwrap_optional(tp)
            if inner is str and not (optional and text.strip() in ("null", "~", "")):
                value = text
            else:
                try:
                    value = yaml.safe_load(text) if text.strip() else None
                except yaml.YAMLError as e:
                    errors.append(f"{key}: cannot parse {text!r} ({e.__class__.__name__})")
                    break
            v = _coerce(value, tp, key, errors)
            if v is not _BAD:
                _check_choice(fields[part], v, key, errors)
                setattr(obj, part, v)
