"""``vladata convert oxe SRC OUT``: an Open X-Embodiment / RLDS dataset (TFDS shards) -> store."""

from __future__ import annotations

import warnings

import click

from cli.common import convert_options, fails_cleanly, run_convert


@click.command("oxe")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path())
@click.option("--dataset", default=None, metavar="NAME",
              help="Standardisation table entry to use (default: the name in dataset_info.json).")
@click.option("--split", "splits", multiple=True, metavar="S",
              help="Only this TFDS split (repeatable; default: every split).")
@click.option("--raw", is_flag=True,
              help="Keep the raw features only: no standardised action/state/cameras.")
@click.option("--skip-bad-records", is_flag=True,
              help="Leave out records that fail their CRC, are truncated or do not match "
                   "features.json (they are listed in the summary) instead of stopping.")
@click.option("--fps", type=float, default=None,
              help="Frame rate to record (default: the table's; 0 = unknown for other datasets).")
@convert_options
@fails_cleanly
def command(src, out, dataset, splits, raw, skip_bad_records, fps, **opts):
    """Convert the TFDS dataset version directory SRC (dataset_info.json, features.json,
    <name>-<split>.tfrecord-NNNNN-of-MMMMM) into the store OUT, without TensorFlow."""
    from vladata.sources.oxe import OxeSource
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = OxeSource(src, dataset=dataset, splits=list(splits) or None,
                           standardize=not raw, skip_bad_records=skip_bad_records, fps=fps,
                           progress=not opts.get("as_json"),
                           allow_outside=opts["allow_outside"])
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    run_convert(source, out, **opts)


@click.command("oxe")
@click.argument("out", type=click.Path())
@click.option("--dataset", default="fractal20220817_data", show_default=True,
              help="Which OXE dataset's exact TFDS layout to write (or example_unlisted).")
@click.option("--episodes", default=4, show_default=True)
@click.option("--real-sizes", is_flag=True, help="Cameras at the real dataset's resolution.")
def sample_command(out, dataset, episodes, real_sizes):
    """Write a small TFDS dataset version directory (TFRecord shards) at OUT."""
    from vladata.samples.oxe import write_sample
    path = write_sample(out, dataset=dataset, episodes=episodes, real_sizes=real_sizes)
    click.echo(f"wrote an OXE sample ({dataset}) to {path}")
