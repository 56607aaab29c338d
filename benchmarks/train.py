"""Trainer overhead and data wait: ``vlatrain``'s loop against a bare PyTorch loop, same run.

Three measurements on the same model (``configs/calvin.yaml``'s embedded policy, or what the
overrides make of it), in one process:

1. **bare**: a plain PyTorch loop over real batches held in memory -- device-side preparation,
   forward, loss, backward, clip, AdamW step; nothing else;
2. **trainer (memory)**: ``vlatrain.loop.train`` over the same in-memory batches, with its
   logging (metrics.jsonl + TensorBoard), LR schedule and bookkeeping. Bare and trainer run
   in alternating stretches of ``--chunk`` steps (so load from elsewhere hits both alike); the
   overhead is the median over pairs of trainer time / bare time - 1;
3. **trainer (store)**: ``vlatrain.recipes.train.run`` -- what ``vlatrain run`` does -- reading
   windows from the store through the vladata loader: samples/s and the data-wait fraction
   (time blocked on the loader / wall time, as the trainer logs it), after warm-up.

    python benchmarks/train.py                       # converts a CALVIN sample into a temp dir
    python benchmarks/train.py --data calvin.vla --repeats 15 --chunk 20 train.threads=2

Extra ``key=value`` arguments override the config (``model.head=lstm``, ``data.batch_size=64``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vlatrain import data  # noqa: E402
from vlatrain.augment import BatchPreparer  # noqa: E402
from vlatrain.config import load_config  # noqa: E402
from vlatrain.distributed import DistInfo, pick_device  # noqa: E402
from vlatrain.logging import RunLogger  # noqa: E402
from vlatrain.loop import TrainState, train  # noqa: E402
from vlatrain.losses import make_loss  # noqa: E402
from vlatrain.model import build_policy  # noqa: E402
from vlatrain.optim import build_optimizer, lr_at, set_lr  # noqa: E402
from vlatrain.precision import autocast_for  # noqa: E402
from vlatrain.recipes import train as recipe  # noqa: E402
from vlatrain.seeding import seed_everything  # noqa: E402


class MemoryLoader:
    """Cycles through batches held in memory; resumable like the vladata loader."""

    def __init__(self, batches):
        self.batches, self.position = batches, 0

    def __iter__(self):
        while True:
            b = self.batches[self.position % len(self.batches)]
            self.position += 1
            yield b

    def state_dict(self):
        return {"position": self.position}

    def close(self):
        pass


def build(cfg, spec, dev):
    seed_everything(cfg.train.seed)
    policy = build_policy(cfg.model, spec).to(dev)
    prep = BatchPreparer(spec, {c: policy.backbone.image_spec(c) for c in spec.cameras},
                         cfg.data.augment, dev, discrete=policy.discrete,
                         use_state=cfg.model.use_state)
    return policy, prep, build_optimizer(policy, cfg.optim), make_loss(cfg, policy, dev)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


class Bare:
    """The plainest loop doing the same work: prepare, forward, loss, backward, clip, step."""

    def __init__(self, cfg, spec, batches, dev):
        self.cfg, self.batches, self.dev, self.i = cfg, batches, dev, 0
        self.policy, self.prep, self.opt, self.loss_fn = build(cfg, spec, dev)
        self.gen = torch.Generator(dev).manual_seed(0)
        self.autocast = autocast_for(cfg.train.precision, dev)

    def steps(self, k: int) -> None:
        for _ in range(k):
            set_lr(self.opt, lr_at(self.i, self.cfg.optim, self.cfg.train.steps))
            self.opt.zero_grad(set_to_none=True)
            obs, tgt = self.prep(self.batches[self.i % len(self.batches)], train=True, gen=self.gen)
            with self.autocast():
                loss = self.loss_fn(self.policy(obs), tgt)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(),
                                           self.cfg.optim.grad_clip or float("inf"))
            self.opt.step()
            self.i += 1
        loss.item()  # the trainer syncs at its log lines; so does this, once per call


class Trainer:
    """vlatrain.loop.train over the same in-memory batches, logging to metrics.jsonl + TensorBoard."""

    def __init__(self, cfg, spec, batches, dev, out: Path):
        policy, prep, opt, loss_fn = build(cfg, spec, dev)
        self.st = TrainState(cfg=cfg, model=policy, policy=policy, optimizer=opt,
                             scaler=torch.amp.GradScaler(dev.type,
                                                         enabled=cfg.train.precision == "fp16"),
                             loader=MemoryLoader(batches), prep=prep, loss_fn=loss_fn,
                             gen=torch.Generator(dev).manual_seed(0), dist=DistInfo(device=dev),
                             logger=None, autocast=autocast_for(cfg.train.precision, dev))
        self.st.logger = RunLogger(out, total_steps=10**6, tensorboard=cfg.log.tensorboard,
                                   progress=False)
        cfg.train.steps = 0

    def steps(self, k: int) -> None:
        self.st.cfg.train.steps += k  # train() runs on to the new step count
        train(self.st)


def timed(runner, k: int, dev) -> float:
    sync(dev)
    t0 = time.perf_counter()
    runner.steps(k)
    sync(dev)
    return time.perf_counter() - t0


def store_run(cfg, steps, warmup, out: Path) -> tuple[float, float]:
    """(samples/s, data-wait fraction) of the recipe reading from the store, after warm-up."""
    cfg.out, cfg.train.steps = str(out), warmup + steps
    cfg.eval.every, cfg.train.checkpoint_every = 0, 10**9
    cfg.log.progress = False
    recipe.run(cfg)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [d for d in lines if "loss" in d and d["step"] > warmup]
    samples = cfg.log.every * cfg.data.batch_size  # per log line
    elapsed = [samples / d["samples_per_s"] for d in timed]
    waited = sum(d["data_wait"] * e for d, e in zip(timed, elapsed))
    return len(timed) * samples / sum(elapsed), waited / sum(elapsed)


def sample_store(tmp: Path) -> Path:
    from vladata.samples.calvin import write_sample
    from vladata.sources.calvin import CalvinSource
    from vladata.store.writer import convert
    raw = write_sample(tmp / "raw", depth=False)
    convert(CalvinSource(raw), tmp / "calvin.vla", progress=False)
    return tmp / "calvin.vla"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="a store (default: convert a CALVIN sample into a temp dir)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "calvin.yaml"))
    ap.add_argument("--chunk", type=int, default=20, help="steps per timed bare/trainer stretch")
    ap.add_argument("--repeats", type=int, default=15, help="alternating bare/trainer pairs")
    ap.add_argument("--steps", type=int, default=150, help="timed steps of each store run")
    ap.add_argument("--store-runs", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        path = args.data or str(sample_store(tmp))
        overrides = [f"data.path={path}", *args.overrides]

        def config():
            return load_config(args.config, overrides)

        cfg = config()
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        dev = pick_device(cfg.train.device)
        ds = data.open_store(path)
        spec = data.spec_from_store(ds, cfg.data)
        loader = data.train_loader(ds, cfg, rank=0, world_size=1, pin_memory=False)
        batches = []
        for b in loader:  # real batches, copied out of the loader's reused buffers
            batches.append({k: (v.clone().to(dev) if torch.is_tensor(v) else list(v))
                            for k, v in b.items()})
            if len(batches) == 16:
                break
        loader.close()
        bare, trainer = Bare(config(), spec, batches, dev), Trainer(config(), spec, batches,
                                                                    dev, tmp / "memory")
        for runner in (bare, trainer):
            runner.steps(args.warmup)
        res = {"bare_s": [], "trainer_s": [], "store": [], "data_wait": []}
        for r in range(args.repeats):  # alternate, so load from elsewhere hits both alike
            pair = (bare, trainer) if r % 2 == 0 else (trainer, bare)
            for runner in pair:
                key = "bare_s" if runner is bare else "trainer_s"
                res[key].append(timed(runner, args.chunk, dev))
        trainer.st.logger.close()
        for r in range(args.store_runs):
            sps, wait = store_run(config(), args.steps, args.warmup, tmp / f"store{r}")
            res["store"].append(sps)
            res["data_wait"].append(wait)
    batch = cfg.data.batch_size
    ratios = [t / b for b, t in zip(res["bare_s"], res["trainer_s"])]
    summary = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
        f"cpu ({torch.get_num_threads()} threads)",
        "model": f"{cfg.model.backbone}+{cfg.model.head}, batch {batch}, "
                 f"history {cfg.data.history}, chunk {cfg.data.chunk}",
        "bare_samples_per_s": args.chunk * batch / statistics.median(res["bare_s"]),
        "trainer_samples_per_s": args.chunk * batch / statistics.median(res["trainer_s"]),
        "trainer_overhead": statistics.median(ratios) - 1,
        "store_samples_per_s": statistics.median(res["store"]),
        "store_data_wait": statistics.median(res["data_wait"]),
        "runs": res,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    print(f"device: {summary['device']}; model: {summary['model']}")
    print(f"bare loop, in-memory batches      {summary['bare_samples_per_s']:9.1f} samples/s")
    print(f"vlatrain loop, in-memory batches  {summary['trainer_samples_per_s']:9.1f} samples/s   "
          f"overhead {100 * summary['trainer_overhead']:+.1f}% (median of {args.repeats} "
          f"alternating pairs of {args.chunk} steps)")
    print(f"vlatrain run, store + loader      {summary['store_samples_per_s']:9.1f} samples/s   "
          f"data wait {100 * summary['store_data_wait']:.2f}% of wall time (median of "
          f"{args.store_runs} runs of {args.steps} steps after {args.warmup} warm-up steps)")


if __name__ == "__main__":
    main()
