"""``vladata convert hdf5|lerobot|rosbag``: real-robot logs -> store; ``vladata sample`` for them.

``commands`` are the ``convert`` subcommands, ``sample_commands`` the ``sample`` subcommands
(registered by cli/vladata.py).
"""

from __future__ import annotations

import click

from cli.common import convert_options, fails_cleanly, run_convert


@click.command("hdf5")
@click.argument("src", type=click.Path(exists=True))
@click.argument("out", type=click.Path())
@click.option("--layout", type=click.Choice(["aloha", "robomimic", "mapping"]), required=True,
              help="aloha: a folder of ACT episode_N.hdf5; robomimic: one dataset file; "
                   "mapping: any layout described by --map.")
@click.option("--map", "mapping_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML mapping file (format: hdf5) for --layout mapping.")
@click.option("--instruction", default=None,
              help="Language instruction for episodes that carry none (e.g. an ALOHA task).")
@click.option("--fps", type=float, default=None, help="Override the layout's frame rate.")
@convert_options
@fails_cleanly
def hdf5(src, out, layout, mapping_file, instruction, fps, **opts):
    """Convert HDF5 robot logs at SRC (a folder of episode files, or one file) into store OUT."""
    if (layout == "mapping") != (mapping_file is not None):
        raise click.UsageError("--map FILE goes with --layout mapping, and only with it")
    from vladata.sources.hdf5 import Hdf5Source
    source = Hdf5Source(src, layout=layout, mapping_file=mapping_file, instruction=instruction,
                        fps=fps, allow_outside=opts["allow_outside"])
    run_convert(source, out, **opts)


@click.command("lerobot")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path())
@convert_options
@fails_cleanly
def lerobot(src, out, **opts):
    """Convert the local LeRobot dataset root SRC (v3.0, v2.1 or v2.0) into the store OUT."""
    from vladata.sources.lerobot import LeRobotSource
    run_convert(LeRobotSource(src, allow_outside=opts["allow_outside"]), out, **opts)


@click.command("rosbag")
@click.argument("src", type=click.Path(exists=True))
@click.argument("out", type=click.Path())
@click.option("--map", "mapping_file", type=click.Path(exists=True, dir_okay=False), required=True,
              help="YAML mapping file (format: rosbag): topics/fields -> features, control rate.")
@click.option("--fps", type=float, default=None, help="Override the mapping's control rate.")
@convert_options
@fails_cleanly
def rosbag(src, out, mapping_file, fps, **opts):
    """Convert ROS bags at SRC (a ROS1 .bag, a ROS2 bag directory, or a folder of them; one
    episode per bag) into the store OUT, resampled to the control rate (nearest earlier message)."""
    from vladata.sources.rosbag import RosbagSource
    run_convert(RosbagSource(src, mapping_file, fps=fps or 0.0,
                             allow_outside=opts["allow_outside"]), out, **opts)


commands = [hdf5, lerobot, rosbag]


@click.command("hdf5")
@click.argument("out", type=click.Path())
@click.option("--layout", type=click.Choice(["aloha", "aloha-compressed", "robomimic", "custom"]),
              default="aloha", show_default=True,
              help="custom: the layout examples/mappings/hdf5_custom.yaml describes.")
@click.option("--seed", default=0, show_default=True)
def sample_hdf5(out, layout, seed):
    """Write a small ALOHA (raw or JPEG-compressed), robomimic or custom-layout sample under OUT."""
    from vladata.samples.hdf5 import write_sample
    write_sample(out, layout, seed=seed)
    click.echo(f"wrote a {layout} sample to {out}")


@click.command("lerobot")
@click.argument("out", type=click.Path())
@click.option("--version", "version", type=click.Choice(["v3.0", "v2.1"]), default="v3.0",
              show_default=True)
@click.option("--codec", type=click.Choice(["libsvtav1", "libx264rgb"]), default="libsvtav1",
              show_default=True, help="libsvtav1: LeRobot's default (lossy); libx264rgb: lossless.")
@click.option("--seed", default=0, show_default=True)
def sample_lerobot(out, version, codec, seed):
    """Write a small LeRobot dataset (parquet + mp4) at OUT."""
    from vladata.samples.lerobot import write_sample
    write_sample(out, version, codec=codec, seed=seed)
    click.echo(f"wrote a LeRobot {version} sample to {out}")


@click.command("rosbag")
@click.argument("out", type=click.Path())
@click.option("--storage", type=click.Choice(["ros1", "sqlite3", "mcap"]), default="ros1",
              show_default=True)
@click.option("--seed", default=0, show_default=True)
def sample_rosbag(out, storage, seed):
    """Write small ROS bags and their mapping.yaml under OUT."""
    from vladata.samples.rosbag import write_sample
    write_sample(out, storage, seed=seed)
    click.echo(f"wrote {storage} bags and mapping.yaml to {out}")


sample_commands = [sample_hdf5, sample_lerobot, sample_rosbag]
