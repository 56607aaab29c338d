"""The CALVIN config and the tiny-model overrides that CLI training tests share."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "calvin.yaml")
TINY = ["train.threads=1", "data.num_workers=0", "data.batch_size=8", "model.width=16",
        "model.hidden=32", "model.layers=1", "model.image_size=24", "log.every=1",
        "log.progress=false", "eval.batch_size=16", "eval.batches=1", "optim.warmup_steps=0",
        "log.tensorboard=false"]
