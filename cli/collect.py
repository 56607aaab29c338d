"""``vladata collect``: record demonstrations in a simulator straight into a store."""

from __future__ import annotations

import click

from cli.common import convert_options, fails_cleanly, run_convert


@click.group("collect")
def command():
    """Record scripted demonstrations in a simulator into a store (pip install -e ".[sim]")."""


@command.command("metaworld")
@click.argument("out", type=click.Path())
@click.option("--tasks", default="mt10", show_default=True,
              help="mt10, mt50 or a comma list of Meta-World tasks (reach-v3,push-v3,...).")
@click.option("--episodes-per-task", type=click.IntRange(1), default=50, show_default=True,
              help="Expert episodes attempted per task (failed ones are dropped and counted).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Seeds the initial states (disjoint from `vlatrain rollout`'s).")
@click.option("--image-size", type=click.IntRange(16, 1024), default=128, show_default=True,
              help="Square camera images, pixels.")
@click.option("--cameras", default="corner2,gripperPOV", show_default=True,
              help="Comma list of cameras to record: topview, corner, corner2, corner3, corner4, "
                   "behindGripper, gripperPOV (the MT10 recipe adds topview to triangulate the "
                   "goal; docs/simulation.md).")
@click.option("--max-steps", type=click.IntRange(1), default=300, show_default=True,
              help="Episode step limit; the expert must succeed within it.")
@click.option("--noise-fraction", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Fraction of episodes whose executed xyz actions get Gaussian noise (the stored "
                   "`action` stays the expert's clean action); e.g. 0.8 as in issue 13's "
                   "calibration.")
@click.option("--noise-std", type=click.FloatRange(0), default=0.1, show_default=True,
              help="Standard deviation of that noise, in action units (1 = 1 cm per step); from "
                   "~0.2 the expert needs over 300 steps on peg-insert-side.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1,
              show_default=True, help="Last fraction of each task's episodes split 'validation'.")
@convert_options
@fails_cleanly
def collect_metaworld(out, tasks, episodes_per_task, seed, image_size, cameras, max_steps, noise_fraction,
                      noise_std, val_fraction, **opts):
    """Run Meta-World's scripted experts and write their episodes to the store OUT."""
    try:
        import vlaenv.metaworld
        vlaenv.metaworld.version()
    except ImportError:
        raise click.ClickException('Meta-World is not installed: pip install -e ".[sim]"') from None
    from vlaenv.metaworld_demos import MetaWorldSource
    source = MetaWorldSource(tasks=tasks, episodes_per_task=episodes_per_task, seed=seed,
                             image_size=image_size, cameras=cameras, max_steps=max_steps,
                             noise_fraction=noise_fraction, noise_std=noise_std,
                             val_fraction=val_fraction, workers=opts["workers"],
                             progress=not opts["as_json"])
    try:
        run_convert(source, out, **opts)
    finally:
        source.close()
