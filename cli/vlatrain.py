"""The ``vlatrain`` command: train a policy on a vlakit store, resume a run, evaluate a checkpoint."""

from __future__ import annotations

import json
import os
import sys

import click

from vladata.errors import VladataError


def _fail(e: object):
    raise click.ClickException(str(e)) from None


def _rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks for the run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vlakit")
def main():
    """Train vision-language-action policies on vlakit stores."""


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None,
              help="Continue the run in this directory from its latest checkpoint.")
def run(args, resume_dir):
    """Train: CONFIG [key=value ...], or --resume RUN_DIR [key=value ...].

    \b
    vlatrain run configs/calvin.yaml data.path=calvin.vla train.steps=300 out=runs/calvin
    vlatrain run --resume runs/calvin train.steps=600
    """
    from vlatrain import rundir
    from vlatrain.config import load_config, parse_overrides
    from vlatrain.errors import DivergedError
    from vlatrain.recipes.train import resume_config
    from vlatrain.recipes.train import run as train_run
    cfg = None
    try:
        if resume_dir is not None:
            cfg = resume_config(resume_dir, parse_overrides(args))
            done = rundir.already_done(cfg)
            if done:  # not an error: the run is complete as asked (exit 0, like convert --resume)
                click.echo(done)
                return
        else:
            if not args or "=" in args[0]:
                raise click.UsageError("give a config file first: vlatrain run CONFIG [key=value ...]")
            cfg = load_config(args[0], parse_overrides(args[1:]))
        out = train_run(cfg, resume=resume_dir is not None)
    except DivergedError as e:
        step = rundir.checkpoint_step(cfg.out)
        _fail(f"{e}\n" + (f"{cfg.out} keeps the checkpoint of step {step}: "
                          f"`{rundir.resume_command(cfg.out)}` continues from it"
                          if step is not None else f"{cfg.out} holds no checkpoint yet"))
    except VladataError as e:  # only the project's errors: a bug keeps its traceback
        _fail(e)
    except KeyboardInterrupt:
        if _rank0():
            click.echo("\n" + (rundir.interrupted_message(cfg.out) if cfg is not None else
                               "interrupted"), err=True)
        sys.exit(130)
    if _rank0():
        click.echo(f"run directory: {out}")


@main.command()
@click.argument("store", type=click.Path(exists=True))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the config here (default: print it).")
@click.option("--preset", type=click.Choice(["one-step", "history", "vlm"]), default="one-step",
              show_default=True, help="one-step / history: the embedded tiny backbone with one or "
              "4 observation steps; vlm: a pretrained VLM backbone (needs model.path).")
@click.option("--force", is_flag=True, help="Replace an existing --output file.")
def init(store, output, preset, force):
    """Write a commented config fitted to STORE (cameras, state, actions, splits, language).

    \b
    vlatrain init calvin.vla -o my.yaml
    vlatrain run my.yaml
    """
    from vladata.dataset import open as open_dataset
    from vlatrain import rundir
    from vlatrain.starter import fitted_config
    try:
        text = fitted_config(open_dataset(store), preset, output)
        if output is None:
            click.echo(text, nl=False)
            return
        if os.path.exists(output) and not force:
            raise click.ClickException(f"{output} exists; pass --force to replace it")
        rundir.write_atomic(output, text)
    except VladataError as e:
        _fail(e)
    click.echo(f"wrote {output} ({preset}) for {store}; train with: vlatrain run {output}")


@main.command("eval")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--data", "data_path", required=True, type=click.Path(exists=True),
              help="The store to evaluate on.")
@click.option("--split", default=None, help="Split to evaluate (default: the run's data.val_split).")
@click.option("--batches", type=click.IntRange(1), default=None,
              help="Evaluate only this many batches (default: the whole split).")
@click.option("--batch-size", type=click.IntRange(1), default=None)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(checkpoint, data_path, split, batches, batch_size, device, as_json):
    """Evaluate CHECKPOINT on the validation split of the store at --data."""
    from vlatrain.evaluate import format_report
    from vlatrain.recipes.evaluate import evaluate_checkpoint
    try:
        metrics, spec = evaluate_checkpoint(checkpoint, data_path, split=split, batches=batches,
                                            batch_size=batch_size, device=device)
    except VladataError as e:  # only the project's errors: a bug keeps its traceback
        _fail(e)
    except KeyboardInterrupt:
        click.echo("\ninterrupted", err=True)
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(metrics, indent=1))
        return
    click.echo(f"{checkpoint} (step {metrics['step']}) on {data_path}")
    click.echo(format_report(metrics, spec.action_names))


def _register() -> None:
    from cli import rollout, serve
    main.add_command(rollout.command)
    main.add_command(serve.command)


_register()

if __name__ == "__main__":
    main()
