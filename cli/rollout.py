"""``vlatrain rollout``: closed-loop success rate of a policy in a simulator."""

from __future__ import annotations

import json

import click

from vladata.errors import VladataError


def _policy_choice(ctx, param, value):
    if value is None or value in ("expert", "random") or value.startswith(("ws://", "wss://")):
        return value
    raise click.BadParameter(f"{value!r}: expected expert, random or a server URL "
                             "ws://HOST:PORT (wss:// behind TLS)")


@click.command("rollout")
@click.argument("checkpoint", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--env", "env_name", type=click.Choice(["metaworld"]), default="metaworld",
              show_default=True)
@click.option("--tasks", default="mt10", show_default=True,
              help="mt10, mt50 or a comma list of tasks (reach-v3,push-v3,...).")
@click.option("--episodes", type=click.IntRange(1), default=20, show_default=True,
              help="Episodes per task, each from a fresh held-out initial state.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Seeds the held-out initial states (disjoint from `vladata collect`'s).")
@click.option("--workers", "-j", type=click.IntRange(1), default=1, show_default=True,
              help="Processes, each with its own simulator and renderer.")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True,
              help="Environments per worker stepped together; a checkpoint policy acts for all of "
                   "them in one act_batch call (EGL only).")
@click.option("--policy", "policy_kind", callback=_policy_choice, default=None,
              metavar="expert|random|ws://HOST:PORT",
              help="Instead of CHECKPOINT: the scripted expert, uniform random actions, or the "
                   "policy a `vlatrain serve` server serves at this URL.")
@click.option("--token", "token_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --policy ws://...: the file holding the server's token.")
@click.option("--max-steps", type=click.IntRange(1), default=300, show_default=True,
              help="Episode step limit.")
@click.option("--image-size", type=click.IntRange(16, 1024), default=128, show_default=True)
@click.option("--video", "video_dir", type=click.Path(file_okay=False), default=None,
              help="Write MP4 videos of the first episodes of each task here.")
@click.option("--videos-per-task", type=click.IntRange(0), default=2, show_default=True)
@click.option("--execute", type=click.IntRange(1), default=None,
              help="CHECKPOINT: execute the first K actions of each predicted chunk open loop, "
                   "then re-plan (default: re-plan at every step, K=1).")
@click.option("--ensemble", type=click.FloatRange(0), default=None, metavar="M",
              help="CHECKPOINT: temporal ensembling of overlapping chunks as in ACT, weights "
                   "exp(-M*i) with i=0 the oldest prediction (instead of --execute).")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="CHECKPOINT: torch threads per rollout process (parallelism comes from "
                   "--workers).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def command(checkpoint, env_name, tasks, episodes, seed, workers, batch, policy_kind, token_file,
            max_steps, image_size, video_dir, videos_per_task, execute, ensemble, threads, as_json):
    """Roll CHECKPOINT (or --policy expert|random|ws://HOST:PORT) out; print success per task.

    \b
    vlatrain rollout --policy expert --tasks mt10 --episodes 20 --workers 2
    vlatrain rollout runs/mt10/checkpoints/best.pt --tasks mt10 --video videos/
    vlatrain rollout runs/mt10/checkpoints/best.pt --execute 4 --workers 2
    vlatrain rollout --policy ws://gpu-box:8000 --token token.txt --tasks mt10
    """
    if (checkpoint is None) == (policy_kind is None):
        raise click.UsageError("give either a CHECKPOINT or --policy expert|random|ws://HOST:PORT")
    remote = policy_kind is not None and "://" in policy_kind
    if token_file is not None and not remote:
        raise click.UsageError("--token goes with --policy ws://HOST:PORT")
    if (execute is not None or ensemble is not None) and not checkpoint:
        raise click.UsageError("--execute/--ensemble apply to a CHECKPOINT policy")
    if execute is not None and ensemble is not None:
        raise click.UsageError("choose one chunk execution rule: --execute K or --ensemble M")
    from vlatrain import rollout
    if checkpoint:
        spec = rollout.PolicySpec("checkpoint", checkpoint=checkpoint, execute=execute,
                                  ensemble=ensemble, threads=threads)
    elif remote:
        from cli.serve import read_token
        spec = rollout.PolicySpec("remote", url=policy_kind,
                                  token=read_token(token_file) if token_file else None)
    else:
        spec = rollout.PolicySpec(policy_kind, seed=seed)
    try:
        if checkpoint or remote:  # load the checkpoint (reach the server) before any simulator
            spec.build(None, 0)
        report = rollout.run(spec, tasks, env=rollout.EnvConfig(env_name, image_size, max_steps),
                             episodes=episodes, seed=seed, workers=workers, batch=batch,
                             video_dir=video_dir,
                             videos_per_task=videos_per_task, progress=not as_json)
    except ImportError as e:
        raise click.ClickException(f"{e}: the simulator is not installed: "
                                   'pip install -e ".[sim]"') from None
    except VladataError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(report.to_dict(), indent=1) if as_json else str(report))
