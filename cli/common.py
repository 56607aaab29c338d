"""Flags and error handling shared by the ``vladata`` commands."""

from __future__ import annotations

import functools
import json
import shlex
import sys

import click

from vladata.errors import VladataError


def parse_quantiles(text: str | None) -> tuple[float, ...]:
    """``"[0.01,0.05,0.95,0.99]"`` or ``"0.01 0.99"`` -> (0.01, ...)."""
    if text is None:
        return (0.01, 0.99)
    parts = [p for p in text.strip().strip("[]()").replace(",", " ").split() if p]
    try:
        qs = tuple(float(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"expected numbers like [0.01,0.99], got {text!r}") from None
    bad = [q for q in qs if not 0.0 <= q <= 1.0]
    if not qs or bad:
        raise click.BadParameter(f"quantiles must be numbers in [0, 1], got {text!r}")
    return qs


class RecordsArgs(click.Group):
    """A command group that keeps its command line (``ctx.meta["vlakit.argv"]``) for the
    rerun hints :func:`fails_cleanly` prints."""

    def make_context(self, info_name, args, parent=None, **extra):
        argv = list(args)
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta["vlakit.argv"] = argv
        return ctx


def rerun_command(ctx: click.Context, add: str | None = None, drop: tuple[str, ...] = ()) -> str:
    """The command line that ran ``ctx``, with flag ``add`` and without the flags in ``drop``."""
    args = [a for a in ctx.meta.get("vlakit.argv", sys.argv[1:]) if a not in drop]
    if add and add not in args:
        args.append(add)
    return f"{ctx.find_root().info_name} {shlex.join(args)}"


def fails_cleanly(f):
    """Turn vladata errors into a one-line message and exit status 1 (no traceback); on Ctrl-C
    print once what to run to finish the work (exit status 130)."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except VladataError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            ctx = click.get_current_context()
            if "resume" in ctx.params:  # a conversion: its parts so far are kept
                out = ctx.params.get("out")
                cmd = rerun_command(ctx, add="--resume", drop=("--overwrite",))
                msg = f"interrupted: {out} is incomplete; to finish it, run:\n  {cmd}"
            elif "overwrite" in ctx.params:  # an export: started again
                cmd = rerun_command(ctx, add="--overwrite")
                out = ctx.params.get("out")
                msg = f"interrupted: {out} is incomplete; to redo it, run:\n  {cmd}"
            else:
                msg = f"interrupted; to finish, run again:\n  {rerun_command(ctx)}"
            click.echo(f"\n{msg}", err=True)
            sys.exit(130)
    return wrapper


def tokenizer_options() -> list:
    """Flags choosing the token-id layout of the stored action tokens."""
    return [
        click.option("--token-layout", type=click.Choice(["offset", "openvla", "robovlms"]),
                     default=None, help="Token ids: offset (bin + 10, default), openvla "
                     "(vocab_size - 1 - bin), robovlms (as RoboVLMs computes them)."),
        click.option("--vocab-size", type=click.IntRange(1), default=None,
                     help="The language model tokenizer's vocab_size (openvla, robovlms)."),
        click.option("--n-special", type=click.IntRange(0), default=None,
                     help="RoboVLMs: the number of special tokens of its tokenizer."),
        click.option("--bins", type=click.IntRange(2), default=256, show_default=True),
    ]


def make_tokenizer(token_layout=None, vocab_size=None, n_special=None, bins=256):
    """The ActionTokenizer the flags ask for, or None for the default / the store's own."""
    if token_layout is None and vocab_size is None and n_special is None and bins == 256:
        return None
    from vladata.tokenize import ActionTokenizer
    try:
        return ActionTokenizer(bins=bins, layout=token_layout or "offset", vocab_size=vocab_size,
                               n_special=n_special)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def convert_options(f):
    """The options every ``vladata convert <source>`` command takes."""
    options = [
        click.option("--workers", "-j", type=click.IntRange(1), default=1, show_default=True,
                     help="Worker processes, each writing its own parts of the store."),
        click.option("--resume", is_flag=True,
                     help="Finish an interrupted conversion: redo only the unfinished parts."),
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
                     show_default=True,
                     help="Where the parts run: local processes, or Ray tasks (pip install "
                          "'vlakit[ray]'; see docs/scale-out.md)."),
        click.option("--address", default=None, metavar="ADDR",
                     help="With --engine ray: the Ray cluster to join (HOST:PORT, ray://..., "
                          "auto); default: start a Ray on this machine."),
        click.option("--overwrite", is_flag=True, help="Replace whatever is at OUT."),
        *image_codec_options(),
        click.option("--part-frames", type=int, default=None,
                     help="Frames per part (a multiple of 1024); default from size and workers."),
        click.option("--quantiles", default=None, metavar="'[Q,...]'",
                     help="Quantiles to compute besides 0.01 and 0.99 (always computed), e.g. "
                          "'[0.05,0.95]' (quote it: the shell globs [...])."),
        click.option("--image-stats", is_flag=True, help="Also per-channel image mean/std."),
        *tokenizer_options(),
        click.option("--fast-chunk", type=click.IntRange(1), default=None, metavar="N",
                     help="Also fit FAST action tokens on chunks of N steps (scale 10, "
                          "vocabulary 1024; `vladata stats --fast` refits with other settings)."),
        click.option("--format", "fmt", type=click.Choice(["zarr", "wds"]), default="zarr",
                     show_default=True,
                     help="zarr: the random-access store; wds: also WebDataset shards in OUT/wds "
                          "(256-frame episode pieces; `vladata export` for other choices)."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
        click.option("--allow-outside", is_flag=True,
                     help="Read files the dataset's metadata places outside SRC (path templates, "
                          "globs, HDF5 external links/storage); refused by default."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


#: What each image codec costs, from BENCHMARKS.md ("Image codecs": CALVIN-like 200x200 + 84x84
#: sample frames, 16-frame two-camera windows, a shared 2-core machine; benchmarks/loader.py).
CODEC_HELP = (
    "How camera frames are stored. Measured (BENCHMARKS.md, 'Image codecs'; synthetic CALVIN-like "
    "frames, both cameras: bytes/frame, ms per 16-frame window with 0 workers, windows/s with 2 "
    "workers): raw 141,209 B, 0.16 ms, ~2,300/s (lossless, fastest); lz4 lossless (not "
    "measured there); jpeg q90 4,276 B, 2.1 ms, ~300/s (a JPEG source keeps its own bytes); "
    "h264 (gop 16, crf 23) 279 B, 3.6 ms, ~310/s; av1 (gop 16, crf 30) 193 B, 3.0 ms, ~475/s "
    "(video: lossy, the PSNR is measured and recorded per camera). Real camera frames compress "
    "several times less than these.")


def image_codec_options():
    """--image-codec, --jpeg-quality, --gop, --crf (convert and transcode)."""
    return [
        click.option("--image-codec", type=click.Choice(["raw", "lz4", "jpeg", "h264", "av1"]),
                     default="raw", show_default=True, help=CODEC_HELP),
        click.option("--jpeg-quality", type=click.IntRange(1, 100), default=90, show_default=True),
        click.option("--gop", type=click.IntRange(1, 64), default=None,
                     help="h264/av1: frames per closed GOP, dividing 64 (default 16; a window "
                          "decodes from the keyframe before it, so longer GOPs cost decode time)."),
        click.option("--crf", type=click.IntRange(0, 63), default=None,
                     help="h264/av1: constant rate factor, lower is better quality (default "
                          "h264 23, av1 30)."),
    ]


def run_convert(source, out: str, *, workers=1, resume=False, overwrite=False, image_codec="raw",
                engine="local", address=None,
                jpeg_quality=90, part_frames=None, quantiles=None, image_stats=False, fmt="zarr",
                as_json=False, token_layout=None, vocab_size=None, n_special=None,
                bins=256, allow_outside=False, fast_chunk=None, gop=None, crf=None,
                inputs=None) -> None:
    """Convert ``source`` to a store at ``out`` and print the summary (the convert commands' body).
    ``allow_outside`` is for the source, which the command built with it."""
    from vladata.store.writer import convert
    try:
        summary = convert(source, out, workers=workers, resume=resume, overwrite=overwrite,
                          engine=engine, address=address,
                          image_codec=image_codec, jpeg_quality=jpeg_quality,
                          part_frames=part_frames, quantiles=parse_quantiles(quantiles),
                          image_stats=image_stats, progress=not as_json, gop=gop, crf=crf,
                          inputs=inputs,
                          tokenizer=make_tokenizer(token_layout, vocab_size, n_special, bins))
        if fast_chunk is not None:
            from vladata.fast import fit_store
            fit_store(out, chunk=fast_chunk)
        if fmt == "wds":
            from pathlib import Path

            import vladata
            from vladata.stream import export_state, export_wds
            wds = Path(out) / "wds"
            if not (summary.already_complete and export_state(str(wds)) == "complete"):
                export_wds(vladata.open(out), str(wds), samples=256, overwrite=True)
    except VladataError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(summary.to_dict(), indent=1) if as_json else str(summary))
