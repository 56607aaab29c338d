"""Readable text tables for ``vladata inspect`` and ``vladata stats``."""

from __future__ import annotations

import numpy as np


def format_summary(info: dict) -> str:
    lines = [f"{info['path']}  (vlakit store v{info['format_version']}, source {info['source']}, "
             f"{info['fps']:g} fps)",
             f"  {info['frames']:,} frames, {info['episodes']:,} episodes, "
             f"{info['segments']:,} language segments"]
    for split, d in info["splits"].items():
        lines.append(f"  split {split:<12} {d['episodes']:>6,} episodes {d['frames']:>10,} frames")
    lines.append("  features:")
    width = max(len(k) for k in info["features"])
    for name, f in info["features"].items():
        shape = "x".join(str(s) for s in f["shape"])
        lines.append(f"    {name:<{width}}  {f['dtype']:<8} ({shape})  {f['kind']:<6} {f['codec']}")
    if info.get("normalization"):
        lines += format_normalization(info["normalization"],
                                      info["features"].get("action", {}).get("names"))
    if info.get("tokenizer"):
        tok = info["tokenizer"]
        lines.append("  tokenizer (action.tokens):")
        lines += [f"    {k:<12} {'-' if v is None else v}" for k, v in tok.items()]
    return "\n".join(lines)


def format_normalization(norm: dict, names) -> list[str]:
    """The action normalisation as a table: one row per action dimension."""
    mask, grip = norm.get("mask"), norm.get("gripper") or {}
    n = len(names) if names else (len(mask) if mask else 0)
    low, high = norm.get("low", ""), norm.get("high", "")
    span = f" ({low} -> -1, {high} -> +1)" if low and high else ""
    lines = [f"  normalization (action.norm): {norm.get('mode')}{span}"]
    if not n:
        return lines
    gdim = grip.get("dim") % n if grip.get("dim") is not None else None
    lines.append(f"    {'dim':<20}normalised")
    for d in range(n):
        label = names[d] if names else str(d)
        if d == gdim:
            how = (f"gripper: closed/open {grip.get('source')} -> {grip.get('target')}"
                   + (" (binarised)" if grip.get("binarize") else ""))
        else:
            how = "yes" if mask is None or mask[d] else "no (kept as stored)"
        lines.append(f"    {label:<20}{how}")
    return lines


def format_stats(stats: dict, features: dict, *, split: str) -> str:
    lines = [f"statistics over split: {split}"]
    for name, s in stats.items():
        names = features[name].names if name in features else None
        keys = [k for k in s if k != "count"]
        lines.append(f"\n{name}  (count {int(np.asarray(s['count']).ravel()[0]):,})")
        lines.append("  " + f"{'dim':<16}" + "".join(f"{k:>12}" for k in keys))
        for d in range(len(np.asarray(s["min"]).ravel())):
            label = names[d] if names and d < len(names) else str(d)
            lines.append("  " + f"{label:<16}" +
                         "".join(f"{float(np.asarray(s[k]).ravel()[d]):>12.5g}" for k in keys))
    return "\n".join(lines)
