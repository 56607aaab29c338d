"""``vladata export PATH OUT --format wds``: write a store's streaming form (WebDataset shards)."""

from __future__ import annotations

import re

import click

from cli.common import fails_cleanly

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}


def parse_size(text: str) -> int:
    """``"512MB"``, ``"1G"``, ``"1000000"`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise click.BadParameter(f"expected a size like 512MB or 1GB, got {text!r}")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n < 1:
        raise click.BadParameter(f"shard size must be positive, got {text!r}")
    return n


@click.command("export")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.argument("out")
@click.option("--format", "fmt", type=click.Choice(["wds"]), default="wds", show_default=True,
              help="wds: WebDataset tar shards plus index.json.")
@click.option("--chunk", type=click.IntRange(1), default=None,
              help="Frames per sample (a piece of an episode); default: one sample per episode.")
@click.option("--context", type=click.IntRange(0), default=31, show_default=True,
              help="Extra frames stored either side of a --chunk piece; windows need "
                   "history-1 and chunk-1 of them.")
@click.option("--shard-size", default="1GB", show_default=True, help="Target size of a tar shard.")
@click.option("--overwrite", is_flag=True,
              help="Replace a previous vlakit export at OUT (nothing else is ever replaced).")
@fails_cleanly
def command(path, out, fmt, chunk, context, shard_size, overwrite):
    """Export the store at PATH as streaming shards at OUT (a directory or an fsspec URL).

    OUT must be new, empty, or (with --overwrite) a previous vlakit export.
    """
    import vladata
    from vladata.stream import export_wds
    index = export_wds(vladata.open(path), out, samples=chunk or "episode",
                       shard_size=parse_size(shard_size), context=context, overwrite=overwrite)
    samples = sum(s["samples"] for s in index["shards"])
    size = sum(s["bytes"] for s in index["shards"])
    click.echo(f"wrote {len(index['shards'])} shards, {samples} samples, "
               f"{size / 2**20:,.1f} MiB to {out}")


__all__ = ["command", "parse_size"]
