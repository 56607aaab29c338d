"""Dataset cards: ``vladata card STORE`` writes ``STORE/README.md``, a store that explains itself.

Modelled on LeRobot's hub cards: what the data is (source, robot, frame rate, vlakit and store
versions), how much of it there is (episodes and frames per split), what it looks like (each
camera with a thumbnail strip), what it holds (action and state dimensions by name with their
statistics, the normalisation and gripper convention), what it asks for (the language tasks
with their counts) and how it was made (an equivalent conversion command).

Files (all vlakit's own, each written to a temporary name and renamed), both at the store's
root and so outside what the manifest lists (``zarr.json``, ``data/``, ``meta/``): the card is
derived from the store and can be written again at any time, so writing it never touches the
manifest, ``vladata verify`` neither lists nor checks it, and a damaged card never stops a store
from opening:

- ``README.md``, starting with :data:`MARKER`; a ``README.md`` without the marker (someone
  else's) is never overwritten;
- ``card/<camera>.png``: the thumbnail strips.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from vladata.errors import StoreError
from vladata.store import layout

MARKER = "<!-- vlakit dataset card: written by `vladata card`; rerun it to refresh -->"
CARD_DIR = "card"
THUMBS = 8          # frames per strip
THUMB_HEIGHT = 96   # pixels
TASKS_SHOWN = 30


def write_card(ds) -> Path:
    """Write the card of the opened store ``ds`` (``vladata.open``); return the README path."""
    root = Path(ds.path)
    readme = root / "README.md"
    if readme.exists() and not readme.read_text(errors="replace").startswith(MARKER):
        raise StoreError(f"{readme}: exists and is not a vlakit card (no {MARKER!r} first "
                         "line); move it away to write the card")
    thumbs = {cam: _write_strip(ds, cam, root / CARD_DIR / f"{cam.split('.')[-1]}.png")
              for cam in _cameras(ds)}
    _write_atomic(readme, card_text(ds, {c: p.relative_to(root).as_posix() for c, p in thumbs.items()}))
    return readme


def card_text(ds, thumbs: dict[str, str]) -> str:
    """The card's Markdown; ``thumbs``: camera feature -> strip path relative to the store."""
    info, si = ds.info, ds.info.get("source_info") or {}
    robot = si.get("robot") or si.get("robot_type") or "not recorded"
    name = Path(ds.path).name
    lines = [MARKER, "", f"# {name}", "",
             f"A vlakit store (format v{info['format_version']}) converted from **{info['source']}**"
             f"{' (' + si['dataset'] + ')' if si.get('dataset') else ''}.", "",
             "| | |", "|---|---|",
             f"| source | {info['source']} |", f"| robot | {robot} |",
             f"| fps | {info['fps']:g} |",
             f"| episodes | {len(ds):,} |", f"| frames | {ds.num_frames:,} |",
             f"| language segments | {ds.segments.height:,} |",
             f"| vlakit | {_version()} |", "",
             "## Splits", "", "| split | episodes | frames |", "|---|---:|---:|"]
    for split, d in ds.summary()["splits"].items():
        lines.append(f"| {split} | {d['episodes']:,} | {d['frames']:,} |")
    lines += ["", "## Cameras", ""]
    feats = info["features"]
    if not thumbs:
        lines.append("No camera.")
    for cam, rel in thumbs.items():
        f = feats[cam]
        shape = "x".join(str(s) for s in f["shape"])
        lines += [f"**{cam}** ({shape}, {f['storage']['codec']}): frames evenly spaced over "
                  "episode 0", "", f"![{cam}]({rel})", ""]
    lines += _dims_section(ds, layout.ACTION, "Actions")
    norm = info.get("normalization") or {}
    grip = norm.get("gripper") or {}
    if norm:
        lines += [f"Normalised (`action.norm`) with {norm.get('mode')} statistics"
                  f"{' (' + norm['low'] + ' -> -1, ' + norm['high'] + ' -> +1)' if norm.get('low') else ''}"
                  f" of split `{info.get('stats_split')}`."
                  + (f" Gripper dimension {grip.get('dim')}: closed/open stored as "
                     f"{grip.get('source')}, normalised to {grip.get('target')}." if grip else ""),
                  ""]
    if si.get("gripper_meaning") and si["gripper_meaning"] != "unknown":
        lines += [f"The source says: {si['gripper_meaning']}", ""]
    if layout.STATE in feats:
        lines += _dims_section(ds, layout.STATE, "State")
    lines += _tasks_section(ds)
    lines += ["## How it was made", "", "```bash", conversion_command(ds), "```", "",
              "Equivalent command, reconstructed from the store's `source_info` (the image codec "
              "and tokenizer flags are recorded in `zarr.json`). Check the store with "
              f"`vladata verify {name}`; read it with `vladata.open(\"{name}\")`. This card "
              "(README.md, card/) is outside the store's manifest: `vladata card` rewrites it.",
              ""]
    return "\n".join(lines)


def _dims_section(ds, key: str, title: str) -> list[str]:
    f = ds.info["features"][key]
    n = int(f["shape"][0])
    names = f.get("names") or [str(i) for i in range(n)]
    st = ds.stats.get(key) or {}
    cols = [c for c in ("mean", "std", "min", "max", "q01", "q99") if c in st]
    lines = [f"## {title}", "", f"`{key}`: {n} dimensions ({f['dtype']}); statistics over split "
             f"`{ds.info.get('stats_split')}`.", "",
             "| dim | name | " + " | ".join(cols) + " |", "|---:|---|" + "---:|" * len(cols)]
    for d in range(n):
        vals = " | ".join(f"{float(np.asarray(st[c]).ravel()[d]):.4g}" for c in cols)
        lines.append(f"| {d} | {names[d]} | {vals} |")
    return lines + [""]


def _tasks_section(ds) -> list[str]:
    seg = ds.segments
    counts = Counter(i for i in (seg["instruction"].to_list() if seg.height else []) if i)
    lines = ["## Language", ""]
    if not counts:
        return lines + ["No language instructions.", ""]
    emb = "embedding" in seg.columns and seg["embedding"].is_not_null().any()
    lines += [f"{len(counts):,} distinct instructions over {seg.height:,} segments"
              f"{' (sentence embeddings stored)' if emb else ''}.", "",
              "| instruction | segments |", "|---|---:|"]
    for text, n in counts.most_common(TASKS_SHOWN):
        lines.append(f"| {text.replace('|', '/')} | {n:,} |")
    if len(counts) > TASKS_SHOWN:
        lines.append(f"| ... {len(counts) - TASKS_SHOWN:,} more | |")
    return lines + [""]


def conversion_command(ds) -> str:
    """An equivalent ``vladata convert`` command, from the store's ``source_info``."""
    info, si = ds.info, ds.info.get("source_info") or {}
    out = Path(ds.path).name
    src = next((si[k] for k in ("root", "source_dir", "path", "src") if si.get(k)), "SRC")
    source = info["source"]
    if si.get("layout"):
        return f"vladata convert hdf5 {src} {out} --layout {si['layout']}"
    if source == "oxe":
        return f"vladata convert oxe {src} {out} --dataset {si.get('dataset', 'NAME')}"
    if source == "lerobot" or si.get("format") == "lerobot":
        return f"vladata convert lerobot {src} {out}"
    return f"vladata convert {source} {src} {out}"


def _cameras(ds) -> list[str]:
    return [k for k, f in ds.info["features"].items()
            if f.get("kind") == "image" and len(f["shape"]) == 3 and f["shape"][2] in (1, 3)]


def _write_strip(ds, cam: str, path: Path) -> Path:
    """``THUMBS`` frames of episode 0 side by side, ``THUMB_HEIGHT`` pixels high, as a PNG."""
    from PIL import Image

    from vladata.images import decode_jpeg
    row = ds.episodes.row(0, named=True)
    picks = np.unique(np.linspace(0, row["length"] - 1, THUMBS).round().astype(int))
    arr = ds._reader[cam]
    jpeg = ds.info["features"][cam]["storage"]["codec"] == "jpeg"
    frames = []
    for p in picks:
        r = row["start"] + int(p)
        img = decode_jpeg(arr.read_items(r, r + 1)[0]) if jpeg else arr.read(r, r + 1)[0]
        img = Image.fromarray(np.asarray(img).squeeze(-1) if img.shape[-1] == 1 else np.asarray(img))
        w = max(1, round(img.width * THUMB_HEIGHT / img.height))
        frames.append(img.resize((w, THUMB_HEIGHT), Image.Resampling.BILINEAR).convert("RGB"))
    strip = Image.new("RGB", (sum(f.width for f in frames) + 2 * (len(frames) - 1), THUMB_HEIGHT),
                      "white")
    x = 0
    for f in frames:
        strip.paste(f, (x, 0))
        x += f.width + 2
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    strip.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("vlakit")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
