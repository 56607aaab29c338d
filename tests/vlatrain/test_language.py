"""Language augmentation: swaps stay within a task, carry their embedding, follow the seed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import vladata
from cli.vlatrain import main
from vladata.errors import StoreError
from vlatrain.augment import BatchPreparer
from vlatrain.config import AugmentConfig, Config
from vlatrain.language import PARAPHRASES, LanguageAugmenter, phrasings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(calvin_store):
    return vladata.open(calvin_store)


def batches(ds, n=3):
    win = ds.windows(history=1, chunk=3, split=None)
    loader = win.loader(batch_size=16, shuffle=True, seed=3, num_workers=0)
    return [{k: (v.clone() if torch.is_tensor(v) else list(v)) for k, v in b.items()}
            for b, _ in zip(loader, range(n))]


def stored(ds) -> dict[str, tuple[str, np.ndarray]]:
    seg = ds.segments
    return {i: (t, np.asarray(e, np.float32)) for i, t, e in
            zip(seg["instruction"].to_list(), seg["task"].to_list(), seg["embedding"].to_list())}


def run(aug, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    return aug(batch, batch["language.embedding"], gen)


def test_swaps_stay_within_the_task_with_the_stored_embedding(store):
    table = phrasings(store)
    assert table and all(len(v) >= 2 for v in table.values())
    known = stored(store)
    aug = LanguageAugmenter.from_stores([(store, 1.0)], prob=1.0)
    swapped = 0
    for batch in batches(store):
        texts, emb = run(aug, batch, 0)
        for i, (old, new) in enumerate(zip(batch["instruction"], texts)):
            task = batch["task"][i]
            assert known[new][0] == task                          # the same task
            np.testing.assert_array_equal(emb[i].numpy(), known[new][1])
            if task in table:
                assert new != old                                  # p = 1: always another one
                swapped += 1
            else:
                assert new == old
    assert swapped > 0


def test_reproducible_from_the_seed_and_off_at_zero(store):
    batch = batches(store, 1)[0]
    before = batch["language.embedding"].clone()
    aug = LanguageAugmenter.from_stores([(store, 1.0)], prob=0.5)
    a, b, c = run(aug, batch, 7), run(aug, batch, 7), run(aug, batch, 8)
    assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert torch.equal(batch["language.embedding"], before)          # the batch is untouched
    assert a[0] != c[0]                                              # another seed, other swaps
    assert len({tuple(run(aug, batch, s)[0]) for s in range(12)}) > 2
    off = LanguageAugmenter.from_stores([(store, 1.0)], prob=0.0)
    assert run(off, batch, 7)[0] == batch["instruction"]
    assert Config().data.language_augmentation == 0.0


def test_batch_preparer_swaps_only_in_training(store):
    from vlatrain.data import spec_from_store
    cfg = Config()
    cfg.data.history, cfg.data.chunk = 1, 3
    spec = spec_from_store(store, cfg.data)
    from vlatrain.model.backbone import ImageSpec
    aug = LanguageAugmenter.from_stores([(store, 1.0)], prob=1.0)
    prep = BatchPreparer(spec, {c: ImageSpec((16, 16)) for c in spec.cameras}, AugmentConfig(),
                         torch.device("cpu"), discrete=False, language=aug)
    batch = batches(store, 1)[0]
    gen = torch.Generator().manual_seed(0)
    obs, _ = prep(batch, train=False, gen=gen)
    assert obs.instruction == batch["instruction"]
    obs, _ = prep(batch, train=True, gen=gen)
    assert obs.instruction != batch["instruction"]
    known = stored(store)
    for i, text in enumerate(obs.instruction):
        np.testing.assert_array_equal(obs.language[i].numpy(), known[text][1])


def test_paraphrase_table(calvin_store, tmp_path):
    path = tmp_path / "s.vla"
    shutil.copytree(calvin_store, path)
    ds = vladata.open(path)
    task = ds.segments["task"][0]
    dim = len(ds.segments["embedding"][0])
    (path / PARAPHRASES).write_text(json.dumps({"format_version": 1, "tasks": {
        task: ["no embedding: unusable beside stored embeddings",
               {"instruction": "a new phrasing", "embedding": [0.5] * dim}],
        "a_task_nobody_does": ["alone"]}}))
    table = phrasings(vladata.open(path))
    texts = [x.instruction for x in table[task]]
    assert "a new phrasing" in texts and "no embedding: unusable beside stored embeddings" not in texts
    assert "a_task_nobody_does" not in table                        # one phrasing: nothing to swap
    (path / PARAPHRASES).write_text(json.dumps({"format_version": 1, "tasks": {task: [3]}}))
    with pytest.raises(StoreError, match="paraphrases.json: task .*non-empty string"):
        phrasings(vladata.open(path))
    (path / PARAPHRASES).write_text("{not json")
    with pytest.raises(StoreError, match="unreadable JSON"):
        phrasings(vladata.open(path))


def test_training_is_the_same_whatever_the_worker_count(calvin_store, tmp_path):
    losses = []
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        r = CliRunner().invoke(main, [
            "run", str(ROOT / "configs" / "calvin.yaml"), f"data.path={calvin_store}",
            "data.language_augmentation=0.5", "model.language=embedding", "train.steps=3",
            f"data.num_workers={workers}", f"out={out}", "train.threads=1", "data.batch_size=8",
            "model.width=16", "model.hidden=32", "model.layers=1", "model.image_size=24",
            "log.every=1", "log.progress=false", "log.tensorboard=false", "eval.batches=1",
            "eval.batch_size=16"])
        assert r.exit_code == 0, r.output
        losses.append([json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text()
                       .splitlines() if "loss" in json.loads(x)])
    assert losses[0] == losses[1] and len(losses[0]) == 3
    with pytest.raises(Exception, match="language_augmentation"):
        Config.from_dict({"data": {"language_augmentation": 1.5}})
