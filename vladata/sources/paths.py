"""Paths that dataset metadata names: expanded safely and kept inside the dataset.

A dataset's own files say where its other files are (LeRobot's ``data_path`` template, a TFDS
``filepathTemplate``, a mapping file's ``episodes.files`` glob, an HDF5 external link). Two rules
hold for all of them:

- :func:`safe_format` expands a template with plain ``{name}`` and ``{name:spec}`` fields only
  (a spec such as ``03d`` or ``>5``): no attribute or index access (``{x.__class__}``), no
  conversions, no nested fields -- metadata never evaluates anything;
- :func:`inside` refuses a path that leaves the dataset root (``../x``, an absolute path), naming
  it, unless the user allowed it (``--allow-outside``). The check is lexical: symlinks inside the
  dataset (as in a Hugging Face cache snapshot) are the user's own layout and stay allowed.
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path

from vladata.errors import SourceFormatError

_SPEC = re.compile(r"^(.?[<>=^])?[+\- ]?#?0?\d*,?(\.\d+)?[bdoxXeEfFgGs%]?$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def safe_format(template: str, values: dict, *, file: object = None, key: str | None = None
                ) -> str:
    """``template`` with its ``{name}`` / ``{name:spec}`` fields filled from ``values``.

    >>> safe_format("data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
    ...             {"chunk_index": 0, "file_index": 7})
    'data/chunk-000/file-007.parquet'

    ``{episode_index.__class__}``, ``{x[0]}``, ``{x!r}`` or ``{x:{y}}`` raise
    :class:`SourceFormatError`, as does a field not in ``values``.
    """
    if not isinstance(template, str):
        raise SourceFormatError(f"expected a path template string, got {template!r}", file=file,
                                key=key)
    out = []
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as e:
        raise SourceFormatError(f"malformed path template {template!r} ({e})", file=file,
                                key=key) from None
    for literal, name, spec, conversion in fields:
        out.append(literal)
        if name is None:
            continue
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec
                                                                          else "") + "}"
        if not _NAME.match(name) or conversion is not None or not _SPEC.match(spec or ""):
            raise SourceFormatError(f"field {shown!r} is not a plain name with an optional "
                                    f"simple format spec, in template {template!r}", file=file,
                                    key=key)
        if name not in values:
            raise SourceFormatError(f"unknown field {shown!r} in template {template!r} (known: "
                                    f"{', '.join(sorted(values))})", file=file, key=key)
        try:
            out.append(format(values[name], spec or ""))
        except ValueError as e:
            raise SourceFormatError(f"field {shown!r}: {e}", file=file, key=key) from None
    return "".join(out)


def is_inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether ``path`` (relative paths taken from ``root``) lies in ``root``, lexically."""
    base = os.path.normpath(os.path.abspath(root))
    p = os.path.normpath(os.path.join(base, path))
    return p == base or p.startswith(base.rstrip(os.sep) + os.sep)


def inside(root: str | os.PathLike, path: str | os.PathLike, *, allow_outside: bool = False,
           file: object = None, key: str | None = None, what: str = "path") -> Path:
    """``root / path``, refused when it leaves ``root`` unless ``allow_outside``."""
    if not allow_outside and not is_inside(root, path):
        raise SourceFormatError(f"{what} {str(path)!r} points outside the dataset {str(root)!r}; "
                                "nothing outside it is read unless you pass --allow-outside",
                                file=file, key=key)
    return Path(root) / path
