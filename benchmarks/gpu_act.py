"""Part (d) of the GPU readiness check: the latency of one action.

``vlatrain.policy.Policy.act`` (the policy runtime of issue 13: ``Policy.load(checkpoint,
device)``, ``.reset(instruction)``, ``.act(obs)`` on one frame of store-named features) when that
module exists; until then the model itself on one stored observation window -- prepare (copy to
the device, resize, normalise) + forward + decode, the action copied back to the host -- noted
"policy runtime absent: timed model forward". The VLM (Qwen2-VL-2B shapes, random weights) is
always timed that way: no checkpoint of it exists for the runtime to load.
"""

from __future__ import annotations

import importlib.util
import time

import torch

from gpu_parts import attempt, config, finish, headline_of, percentiles, sync


def one_window(ctx, cfg, spec):
    """The first training window as a batch of one, copied out of the loader's buffers."""
    from vlatrain import data
    loader = data.windows(data.open_store(str(ctx.store)), cfg.data, cfg.data.train_split).loader(
        batch_size=1, shuffle=False, num_workers=0, pin_memory=ctx.device.type == "cuda")
    batch = next(iter(loader))
    batch = {k: (v.clone().pin_memory() if ctx.device.type == "cuda" else v.clone())
             if torch.is_tensor(v) else list(v) for k, v in batch.items()}
    loader.close()
    return batch


def time_forward(ctx, policy, prep, batch, iters: int, autocast) -> dict:
    """Latency of prepare (copy, resize) + forward + decode for one observation window."""
    policy.eval()
    times = []
    with torch.inference_mode():
        for i in range(iters + 3):  # three warm-up calls
            sync(ctx.device)
            t0 = time.perf_counter()
            obs, _ = prep(batch, train=False)
            with autocast():
                act = policy.decode(policy(obs))
            act.cpu()  # the action leaves the device, as a robot needs it
            sync(ctx.device)
            if i >= 3:
                times.append(time.perf_counter() - t0)
            prep.release()
            if ctx.left() <= 0 and len(times) >= 2:
                break
    return percentiles(times)


def act_embedded(ctx) -> dict:
    from vlatrain import data
    from vlatrain.recipes import train as recipe
    s = ctx.size
    if importlib.util.find_spec("vlatrain.policy") is not None:
        return act_runtime(ctx)
    from vlatrain.augment import BatchPreparer
    from vlatrain.model import build_policy
    cfg = config(ctx)
    ds = data.open_store(str(ctx.store))
    spec = data.spec_from_store(ds, cfg.data)
    recipe.seed_everything(0)
    policy = build_policy(cfg.model, spec).to(ctx.device)
    prep = BatchPreparer(spec, {c: policy.backbone.image_spec(c) for c in spec.cameras},
                         cfg.data.augment, ctx.device, discrete=policy.discrete,
                         use_state=cfg.model.use_state)
    res = time_forward(ctx, policy, prep, one_window(ctx, cfg, spec), s["act_iters"],
                       recipe.autocast_for("fp32", ctx.device))
    return {**res, "timed": "model forward",
            "note": "policy runtime absent: timed model forward (prepare + forward + decode of "
                    "one stored window, fp32)"}


def act_runtime(ctx) -> dict:
    """``vlatrain.policy.Policy`` (issue 13's runtime): load a checkpoint, ``act`` on frames."""
    from vlatrain import checkpoint
    from vlatrain.policy import Policy
    from vlatrain.recipes import train as recipe
    import vladata
    out = ctx.work / "act_run"
    recipe.run(config(ctx, "train.steps=2", "eval.every=0", "eval.batches=1",
                      f"data.batch_size={ctx.size['batch']}", "data.num_workers=0", f"out={out}"))
    policy = Policy.load(checkpoint.latest(out / "checkpoints"), device=ctx.device)
    ep = vladata.open(ctx.store).episode(0)
    keys = [k for k in ep if k.startswith("observation.images.") or k == "observation.state"]
    # an instruction of the store: a policy reading stored embeddings refuses any other
    policy.reset(policy.spec.instructions[0] if policy.spec.instructions else "open the drawer")
    times = []
    for i in range(ctx.size["act_iters"] + 3):
        obs = {k: ep[k][i % len(ep[k])] for k in keys}
        t0 = time.perf_counter()
        policy.act(obs)  # returns a numpy array: the device has finished
        if i >= 3:
            times.append(time.perf_counter() - t0)
        if ctx.left() <= 0 and len(times) >= 2:
            break
    return {**percentiles(times), "timed": "vlatrain.policy.Policy.act"}


def part_act(ctx) -> dict:
    from gpu_vlm import act_vlm
    runs = {"embedded": attempt(act_embedded, ctx)}
    runs["vlm"] = attempt(act_vlm, ctx) if ctx.left() > 0 else {
        "skipped": "the part's time budget was spent"}
    notes = [r["note"] for r in runs.values() if "note" in r]
    return finish({**runs, "notes": notes, "headline": headline_of(
        runs, ("model", "p50_ms", "p99_ms", "timed"))}, runs)
