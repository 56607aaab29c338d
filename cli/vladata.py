"""The ``vladata`` command: convert, sample, inspect, stats, export, verify, transcode."""

from __future__ import annotations

import json

import click

from cli.common import (CODEC_HELP, RecordsArgs, convert_options, fails_cleanly,
                        image_codec_options, make_tokenizer, parse_quantiles, run_convert,
                        tokenizer_options)


class StorePath(click.ParamType):
    """A store: an existing local path, or an fsspec URL (``s3://bucket/name.vla``)."""

    name = "path"

    def convert(self, value, param, ctx):
        if "://" in str(value) and not str(value).startswith("file://"):
            return value
        return click.Path(exists=True).convert(value, param, ctx)


def tokenizer_flags(f):
    for opt in reversed(tokenizer_options()):
        f = opt(f)
    return f


@click.group(cls=RecordsArgs, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vlakit")
def main():
    """Convert robot-learning datasets into the vlakit store and inspect them."""


@main.group(help="Convert a raw dataset (one subcommand per source format) into a store.\n\n"
             "--image-codec (every subcommand; `vladata transcode` changes it later): "
             + CODEC_HELP)
def convert():
    pass


@convert.command("calvin")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path())
@click.option("--keys", default=None, metavar="K1,K2",
              help="npz keys to store (default: rgb_static,rgb_gripper,robot_obs,scene_obs,"
                   "rel_actions,actions); add depth_static, depth_gripper, rgb_tactile, "
                   "depth_tactile on request.")
@click.option("--split", "splits", multiple=True, type=click.Choice(["training", "validation"]),
              help="Only these split folders (default: both).")
@convert_options
@fails_cleanly
def convert_calvin(src, out, keys, splits, **opts):
    """Convert a CALVIN split root SRC (training/ + validation/) into the store OUT."""
    from vladata.sources.calvin import DEFAULT_KEYS, CalvinSource
    chosen = tuple(k.strip() for k in keys.split(",")) if keys else DEFAULT_KEYS
    source = CalvinSource(src, keys=chosen, **({"splits": splits} if splits else {}))
    run_convert(source, out, **opts)


@main.group()
def sample():
    """Write a small sample dataset in a raw source format (for demos and tests)."""


@sample.command("calvin")
@click.argument("out", type=click.Path())
@click.option("--train-segments", default=8, show_default=True)
@click.option("--val-segments", default=2, show_default=True)
@click.option("--frames", default="180,260", show_default=True, help="Segment length range.")
@click.option("--image-size", default="200,84", show_default=True,
              help="Static and gripper camera sizes.")
@click.option("--seed", default=0, show_default=True)
def sample_calvin(out, train_segments, val_segments, frames, image_size, seed):
    """Write a CALVIN split root at OUT, laid out exactly like the real dataset."""
    from vladata.samples.calvin import write_sample
    lo, hi = (int(x) for x in frames.split(","))
    static, gripper = (int(x) for x in image_size.split(","))
    path = write_sample(out, train_segments=train_segments, val_segments=val_segments,
                        frames_per_segment=(lo, hi), static_size=static, gripper_size=gripper,
                        seed=seed)
    click.echo(f"wrote a CALVIN sample to {path}")


@main.command()
@click.argument("path", type=StorePath())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fails_cleanly
def inspect(path, as_json):
    """Summarise the store at PATH: frames, episodes, splits, features, statistics."""
    import vladata
    ds = vladata.open(path)
    info = ds.summary()
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    from cli.tables import format_summary
    click.echo(format_summary(info))


@main.command()
@click.argument("path", type=StorePath())
@click.option("--quantiles", default=None, metavar="'[Q,...]'",
              help="Quantiles, e.g. '[0.05,0.95]' (quote it: the shell globs [...]); 0.01 and "
                   "0.99 are always computed too.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--fast", is_flag=True,
              help="Also fit a FAST tokenizer (DCT + BPE) on the train split's normalised "
                   "chunks: meta/fast_tokenizer.json. A store that has one is refitted with its "
                   "recorded settings whenever its statistics are recomputed.")
@click.option("--fast-chunk", type=click.IntRange(1), default=None,
              help="FAST: steps per chunk (default: the recorded one, else 10).")
@click.option("--fast-scale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="FAST: DCT coefficient scale before rounding (default: recorded, else 10).")
@click.option("--fast-vocab", type=click.IntRange(2), default=None,
              help="FAST: BPE vocabulary size (default: recorded, else 1024).")
@tokenizer_flags
@fails_cleanly
def stats(path, quantiles, as_json, fast, fast_chunk, fast_scale, fast_vocab, **tok):
    """Recompute exact statistics of PATH; rewrite meta/stats.json and the normalised actions.

    Everything is computed and written aside first, then swapped in: a failed or interrupted run
    leaves the store as it was, or (if stopped inside the swap) unopenable until rerun.
    """
    import vladata
    from vladata.fast import fit_store, load_settings
    from vladata.stats import stats_to_json
    from vladata.store.finalize import recompute, with_required_quantiles
    if not fast and (fast_chunk or fast_scale or fast_vocab):
        raise click.UsageError("--fast-chunk/--fast-scale/--fast-vocab go with --fast")
    qs = with_required_quantiles(parse_quantiles(quantiles))  # q01/q99 are always kept
    old = load_settings(path)
    result = recompute(path, qs, tokenizer=make_tokenizer(**tok))  # refuses an incomplete store
    if fast or old is not None:  # a recorded FAST tokenizer follows the new statistics
        ft = fit_store(path, chunk=fast_chunk or (old.chunk if old else 10),
                       scale=fast_scale or (old.scale if old else 10.0),
                       vocab_size=fast_vocab or (old.vocab_size if old else 1024))
        st = ft.settings
        click.echo(f"FAST: {st.chunks} chunks of {st.chunk}x{st.action_dim} from split "
                   f"{st.split!r}, scale {st.scale:g}, vocabulary {st.vocab_size}, coefficients "
                   f"{st.min_token}..{st.max_token} -> {path}/meta/fast_tokenizer.json", err=True)
    if as_json:
        click.echo(json.dumps(stats_to_json(result, split=vladata.open(path).info["stats_split"],
                                            quantiles=qs), indent=1))
        return
    from cli.tables import format_stats
    ds = vladata.open(path)
    click.echo(format_stats(result, ds.features, split=ds.info["stats_split"]))


@main.command()
@click.argument("path", type=StorePath())
@click.option("--quiet", is_flag=True, help="No progress bar.")
@fails_cleanly
def verify(path, quiet):
    """Check every file and every chunk of the store at PATH against its checksums.

    Exits 1 and names each damaged, missing, stray or inconsistent file; 0 if all is well.
    """
    from vladata.store.manifest import verify as verify_store
    problems = verify_store(path, progress=not quiet)
    if problems:
        for p in problems:
            click.echo(p, err=True)
        raise click.ClickException(f"{path}: {len(problems)} problem(s) found")
    click.echo(f"{path}: every file and chunk is intact")


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@fails_cleanly
def card(path):
    """Write a dataset card into the store at PATH: README.md + card/<camera>.png.

    Source, robot, fps, episodes and frames per split, cameras with thumbnail strips, action and
    state dimensions with their statistics, language tasks with counts, how it was converted.
    The card is outside the store's manifest (`vladata verify` does not check it); rerun to
    refresh it. A README.md that vlakit did not write is never replaced.
    """
    import vladata
    from vladata.card import write_card
    click.echo(f"wrote {write_card(vladata.open(path))}")


def _codec_flags(f):
    for opt in reversed(image_codec_options()):
        f = opt(f)
    return f


@main.command()
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path())
@_codec_flags
@click.option("--workers", "-j", type=click.IntRange(1), default=1, show_default=True)
@click.option("--resume", is_flag=True, help="Finish an interrupted transcode.")
@click.option("--overwrite", is_flag=True, help="Replace the vlakit store at OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@fails_cleanly
def transcode(store, out, image_codec, jpeg_quality, gop, crf, workers, resume, overwrite,
              as_json):
    """Rewrite the store STORE at OUT with another image codec, without the original source.

    Episodes, segments, features, statistics quantiles and the tokenizer are STORE's; frames
    are decoded and stored as --image-codec says (JPEG -> JPEG copies the bytes). The writer's
    output rules apply: OUT is never STORE or inside it.
    """
    from vladata.store.transcode import transcode as run
    summary = run(store, out, image_codec=image_codec, jpeg_quality=jpeg_quality, gop=gop,
                  crf=crf, workers=workers, resume=resume, overwrite=overwrite,
                  progress=not as_json)
    click.echo(json.dumps(summary.to_dict(), indent=1) if as_json else str(summary))


def _register() -> None:
    """The commands of the other source readers, each defined beside its own flags."""
    from cli import collect, convert_oxe, convert_real, export
    main.add_command(export.command)
    main.add_command(collect.command)
    convert.add_command(convert_oxe.command)
    sample.add_command(convert_oxe.sample_command)
    for cmd in convert_real.commands:
        convert.add_command(cmd)
    for cmd in convert_real.sample_commands:
        sample.add_command(cmd)


_register()

if __name__ == "__main__":
    main()
