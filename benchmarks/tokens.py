"""Action tokens: uniform bins vs FAST on each sample store, and autoregressive decoding speed.

    python benchmarks/tokens.py [--chunk 10] [--scale 10] [--vocab 1024] [--repeat 3]
                                [--stores calvin,oxe,hdf5,lerobot,rosbag] [--no-inference]
                                [--no-vlm] [--vlm-batches 1,8] [--vlm-long 500]

Part 1, per sample store (written by ``vladata sample <source>`` and converted by ``vladata
convert <source>`` into a temporary folder): FAST is fitted on the train split's normalised
chunks of ``--chunk`` steps (``vladata.fast.fit_store``, what ``vladata stats --fast`` runs),
then every chunk of every split is tokenised both ways. Printed: tokens per chunk (FAST mean
and max; bins: c x A), the ratio bins/FAST, encode and decode chunks/s (best of ``--repeat``),
and the reconstruction error of normalised values (RMSE and max) -- FAST's against its bound
``0.5 sqrt(c) / scale``, the bins' against half a bin.

Part 2, on the CALVIN sample store: greedy decoding of an (untrained) policy with the embedded
backbone and the default model size, batch 1 and 32, on this machine's CPU: the parallel
``discrete`` head (the baseline, one forward for the whole chunk), the autoregressive head over
bins with and without its KV cache, and over FAST tokens (constrained). Printed: tokens/s and
actions/s (one action = one step of a chunk) and the ratio to the parallel head, for the head
alone (decoding from the backbone's features: the decoder's own speed) and for the whole policy
step (backbone included, ``decode(policy(obs))``, the runtime's call).

Part 3, on the CALVIN sample store: the VLM LM head (``model.head=lm``) of the tests' tiny
random LLaVA (``tests/helpers/vlm_factories.py``: CLIP + Llama, hidden 32, 2 layers; every
camera of the store at 16 px), the whole policy step ``decode(policy(obs))`` (frames encoded
once): parallel action queries (one LM pass for the chunk), autoregressive with the key/value
cache (``model.vlm.kv_cache``, the default) and without it (one whole pass per token); then
again with ``--vlm-long`` filler words in the prompt (a sequence as long as a real VLM's, where a
frame alone is 256-576 visual tokens). Printed: tokens/s, actions/s, the sequence length, the
ratio to the uncached loop, and whether the cached and uncached loops generated the same tokens.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {  # sample flags, convert flags
    "calvin": ([], []),
    "oxe": (["--episodes", "16"], []),
    "hdf5": (["--layout", "robomimic"], ["--layout", "robomimic"]),
    "lerobot": ([], []),
    "rosbag": ([], ["--map", "{raw}/mapping.yaml"]),
}


def vladata_cli(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "cli.vladata", *args], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    if r.returncode:
        raise RuntimeError(f"vladata {' '.join(args)} failed:\n{r.stderr[-2000:]}")


def make_store(source: str, tmp: Path) -> Path:
    raw, store = tmp / f"{source}.raw", tmp / f"{source}.vla"
    sample, convert = SOURCES[source]
    vladata_cli("sample", source, *sample, str(raw))
    src = raw
    if source == "hdf5":
        src = next(raw.rglob("*.hdf5"))
    vladata_cli("convert", source, str(src), str(store), *[a.format(raw=raw) for a in convert])
    return store


def best(fn, repeat: int) -> tuple[float, object]:
    t, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        t = min(t, time.perf_counter() - t0)
    return t, out


def compare(store: Path, args) -> dict:
    import vladata
    from vladata.fast import fit_store, store_chunks
    from vladata.tokenize import ActionTokenizer
    t_fit, fast = best(lambda: fit_store(store, chunk=args.chunk, scale=args.scale,
                                         vocab_size=args.vocab), 1)
    ds = vladata.open(store)
    chunks = store_chunks(ds, args.chunk, None).astype(np.float32)     # (N, c, A), every split
    n, c, a = chunks.shape
    bins = ActionTokenizer.from_dataset(ds)
    t_be, ids = best(lambda: bins.encode(chunks), args.repeat)
    t_bd, back = best(lambda: bins.decode(ids), args.repeat)
    t_fe, fids = best(lambda: fast.encode(chunks), args.repeat)
    t_fd, (fback, ok) = best(lambda: fast.decode(fids), args.repeat)
    lengths = np.asarray([len(s) for s in fids])
    inside = np.abs(chunks) <= 1                                       # bins clip outside [-1, 1]
    return {"store": store.stem, "chunks": n, "shape": f"{c}x{a}", "fit_s": t_fit,
            "vocab": fast.settings.vocab_size,
            "fast_mean": lengths.mean(), "fast_max": int(lengths.max()), "bins_len": c * a,
            "bins_enc": n / t_be, "bins_dec": n / t_bd, "fast_enc": n / t_fe, "fast_dec": n / t_fd,
            "bins_rmse": float(np.sqrt(((back - chunks)[inside] ** 2).mean())),
            "bins_max": float(np.abs(back - chunks)[inside].max()),
            "fast_rmse": float(np.sqrt(((fback - chunks) ** 2).mean())),
            "fast_max_err": float(np.abs(fback - chunks).max()),
            "fast_bound": fast.error_bound(), "half_bin": bins.bin_width() / 2,
            "decodable": float(ok.mean())}


def print_table(rows: list[dict]) -> None:
    print(f"{'store':<9}{'chunks':>7}{'c x A':>7}{'bins tok':>9}{'FAST tok':>10}{'max':>5}"
          f"{'ratio':>7}{'bins enc/s':>12}{'FAST enc/s':>12}{'bins dec/s':>12}{'FAST dec/s':>12}"
          f"{'bins RMSE':>11}{'FAST RMSE':>11}{'FAST max':>10}{'bound':>8}")
    for r in rows:
        print(f"{r['store']:<9}{r['chunks']:>7}{r['shape']:>7}{r['bins_len']:>9}"
              f"{r['fast_mean']:>10.1f}{r['fast_max']:>5}{r['bins_len'] / r['fast_mean']:>7.2f}"
              f"{r['bins_enc']:>12.0f}{r['fast_enc']:>12.0f}{r['bins_dec']:>12.0f}"
              f"{r['fast_dec']:>12.0f}{r['bins_rmse']:>11.4f}{r['fast_rmse']:>11.4f}"
              f"{r['fast_max_err']:>10.4f}{r['fast_bound']:>8.3f}")


def inference(store: Path, args) -> None:
    import dataclasses

    import torch

    from vlatrain import data
    from vlatrain.augment import BatchPreparer
    from vlatrain.config import Config
    from vlatrain.model import build_policy
    torch.set_num_threads(args.threads)
    cfg = Config()
    cfg.data.path, cfg.data.chunk, cfg.data.num_workers = str(store), args.chunk, 0
    cfg.data.action_tokens = "fast"
    ds = data.open_store(cfg.data.path)
    spec = data.spec_from_store(ds, cfg.data)
    variants = [("parallel bins (discrete)", "discrete", "constrained", True),
                ("autoregressive bins, KV cache", "autoregressive", "constrained", True),
                ("autoregressive bins, no cache", "autoregressive", "constrained", False),
                ("autoregressive FAST, KV cache", "autoregressive", "constrained", True)]
    print(f"\ninference on the CPU ({args.threads} threads), chunk {spec.chunk} x "
          f"{spec.action_dim}, model.hidden={cfg.model.hidden} layers={cfg.model.layers}")
    print(f"{'head (decoding only | whole policy)':<32}{'batch':>6}{'tokens/chunk':>13}"
          f"{'tokens/s':>10}{'actions/s':>11}{'vs parallel':>12}{'| actions/s':>13}"
          f"{'vs parallel':>12}")
    for batch_size in (1, 32):
        base = None
        for name, head, decoding, cache in variants:
            fast = "FAST" in name
            sp = spec if fast else dataclasses.replace(spec, extra={**spec.extra,
                                                                     "action_tokens": "bins"})
            torch.manual_seed(0)
            model = dataclasses.replace(cfg.model, head=head, decoding=decoding)
            policy = build_policy(model, sp).eval()
            win = data.windows(ds, dataclasses.replace(cfg.data, action_tokens="fast" if fast
                                                       else "bins"), "validation")
            batch = next(iter(win.loader(batch_size=batch_size, shuffle=False, num_workers=0,
                                         drop_last=False)))
            prep = BatchPreparer(sp, {c: policy.backbone.image_spec(c) for c in sp.cameras},
                                 cfg.data.augment, torch.device("cpu"), discrete=policy.discrete)
            obs, _ = prep(batch, train=False)
            with torch.no_grad():
                feats = policy.backbone(obs)
                b, h = feats.features.shape[:2]
                if head == "discrete":
                    def run():                       # the head on the backbone's features
                        return policy.decode(policy.head(feats))
                    tokens = spec.chunk * spec.action_dim
                else:
                    def run():
                        ids = policy.head.generate_from(
                            policy.head.context(feats).flatten(0, 1), use_cache=cache)
                        return policy.decode(ids.view(b, h, -1))
                    ids = policy.head.generate_from(policy.head.context(feats).flatten(0, 1),
                                                    use_cache=cache)
                    eos = policy.head.eos
                    tokens = (float((ids != eos).sum(-1).float().mean()) if eos is not None
                              else ids.shape[-1])
                t, _ = best(run, args.repeat)
                t_full, _ = best(lambda: policy.decode(policy(obs)) if cache else
                                 (policy.backbone(obs), run()), args.repeat)
            chunks_s, full_s = batch_size / t, batch_size / t_full
            base = base or (chunks_s, full_s)
            print(f"{name:<32}{batch_size:>6}{tokens:>13.1f}{chunks_s * tokens:>10.0f}"
                  f"{chunks_s * spec.chunk:>11.0f}{chunks_s / base[0]:>12.3f}"
                  f"{full_s * spec.chunk:>13.0f}{full_s / base[1]:>12.3f}")


def vlm_inference(store: Path, args) -> None:
    import dataclasses

    import torch

    sys.path.insert(0, str(ROOT))  # the repository root: tests/helpers is a package under it
    from tests.helpers.vlm_factories import make_llava
    from vlatrain import data
    from vlatrain.augment import BatchPreparer
    from vlatrain.config import Config
    from vlatrain.model import build_policy
    from vlatrain.vlm import VLMConfig
    torch.set_num_threads(args.threads)
    cfg = Config()
    cfg.data.path, cfg.data.chunk, cfg.data.num_workers = str(store), args.chunk, 0
    ds = data.open_store(cfg.data.path)
    spec = data.spec_from_store(ds, cfg.data)
    variants = [("parallel queries", False, True), ("autoregressive, KV cache", True, True),
                ("autoregressive, no cache", True, False)]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        path = make_llava(Path(tmp) / "llava")
        print(f"\nVLM LM head (tiny random LLaVA, {', '.join(spec.cameras)} at 16 px), CPU "
              f"({args.threads} threads), chunk {spec.chunk} x {spec.action_dim}, the whole "
              f"policy step decode(policy(obs))")
        print(f"{'variant':<28}{'batch':>6}{'seq len':>8}{'tokens/chunk':>13}{'tokens/s':>10}"
              f"{'actions/s':>11}{'vs no cache':>12}")
        sizes = [(0, int(b)) for b in args.vlm_batches.split(",")]
        sizes += [(args.vlm_long, int(b)) for b in args.vlm_batches.split(",") if args.vlm_long]
        for filler, batch_size in sizes:
            rows, generated = [], []
            prompt = ("USER: {image}\n" + "the " * filler
                      + "What action should the robot take to {instruction}? ASSISTANT:")
            for name, ar, cache in variants:
                torch.manual_seed(0)
                model = dataclasses.replace(cfg.model, backbone="llava", path=str(path),
                                            head="lm", image_size=16,
                                            vlm=VLMConfig(autoregressive=ar, kv_cache=cache,
                                                          prompt=prompt))
                policy = build_policy(model, spec).eval()
                win = data.windows(ds, cfg.data, "validation")
                batch = next(iter(win.loader(batch_size=batch_size, shuffle=False,
                                             num_workers=0, drop_last=False)))
                prep = BatchPreparer(spec, {c: policy.backbone.image_spec(c) for c in spec.cameras},
                                     cfg.data.augment, torch.device("cpu"),
                                     discrete=policy.discrete)
                obs, _ = prep(batch, train=False)
                with torch.no_grad():
                    if ar:
                        generated.append(policy(obs).argmax(-1))
                    t, _ = best(lambda: policy.decode(policy(obs)), args.repeat)
                rows.append((name, batch_size / t))
            same = torch.equal(*generated)
            base = rows[-1][1]
            tokens = spec.chunk * spec.action_dim
            seq = vlm_sequence_length(policy.backbone, obs)
            for name, chunks_s in rows:
                print(f"{name:<28}{batch_size:>6}{seq:>8}{tokens:>13}{chunks_s * tokens:>10.0f}"
                      f"{chunks_s * spec.chunk:>11.1f}{chunks_s / base:>12.2f}")
            print(f"{'':<28}cached and uncached tokens identical: {'yes' if same else 'NO'}")


def vlm_sequence_length(bb, obs) -> int:
    """Tokens in the longest sequence the VLM runs for ``obs`` (prompt, frames, state, action
    token, action queries)."""
    from vlatrain.vlm.sequence import Layout, step_rows
    rows = step_rows(obs.mask.bool().nonzero(), list(obs.instruction), len(bb.cameras),
                     bb.prompt, bb.image_pieces, bb.state_proj is not None, bb.n_slots)
    return int(Layout.build(rows, bb.placeholder).mask.sum(1).max())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunk", type=int, default=10)
    p.add_argument("--scale", type=float, default=10.0)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stores", default=",".join(SOURCES))
    p.add_argument("--no-inference", action="store_true")
    p.add_argument("--no-vlm", action="store_true", help="skip part 3 (the VLM LM head)")
    p.add_argument("--vlm-batches", default="1,8", help="batch sizes of part 3")
    p.add_argument("--vlm-long", type=int, default=500,
                   help="part 3 again with this many filler words in the prompt (0: not)")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in args.stores.split(","):
            try:
                store = make_store(source, Path(tmp))
            except RuntimeError as e:
                print(f"{source}: skipped: {e}", file=sys.stderr)
                continue
            rows.append(compare(store, args))
        print(f"FAST: chunk {args.chunk}, scale {args.scale:g}, vocabulary {args.vocab} "
              f"(fitted on the train split); bins: the store's 256 uniform bins")
        print_table(rows)
        if not args.no_inference and "calvin" in args.stores.split(","):
            inference(Path(tmp) / "calvin.vla", args)
        if not args.no_vlm and "calvin" in args.stores.split(","):
            vlm_inference(Path(tmp) / "calvin.vla", args)


if __name__ == "__main__":
    main()
