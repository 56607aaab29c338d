"""Per-channel image statistics (mean/std), exact and mergeable."""

from __future__ import annotations

import numpy as np

from vladata.errors import StatsError
from vladata.stats.exact import _expect_kind


class ImageStatsAccumulator:
    """Per-channel mean/std of uint8 images (N, H, W, C) or (H, W, C), exact and mergeable.

    Keeps a 256-bin histogram per channel, so merging is exact; ``result()`` gives ``mean`` and
    ``std`` (population, ddof=0) as float64 (C,) on the [0, 1] scale (pixel / 255, the scale
    image models normalise from) and ``count`` (int64 (C,), pixels seen per channel).
    """

    def __init__(self, channels: int = 3):
        self.channels = int(channels)
        self.hist = np.zeros((self.channels, 256), np.int64)   # (C, 256)

    def update(self, images) -> "ImageStatsAccumulator":
        img = np.asarray(images)
        if img.dtype != np.uint8 or img.ndim not in (3, 4) or img.shape[-1] != self.channels:
            raise StatsError(f"image statistics need uint8 (N, H, W, {self.channels}) or "
                             f"(H, W, {self.channels}) images, got {img.dtype} {img.shape}")
        flat = img.reshape(-1, self.channels)
        for c in range(self.channels):
            self.hist[c] += np.bincount(flat[:, c], minlength=256)
        return self

    def merge(self, other: "ImageStatsAccumulator") -> "ImageStatsAccumulator":
        if other.channels != self.channels:
            raise StatsError(f"cannot merge image statistics of {other.channels} channels "
                             f"into {self.channels}")
        self.hist += other.hist
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"kind": np.array("image"), "hist": self.hist.copy()}

    @classmethod
    def from_state_dict(cls, d) -> "ImageStatsAccumulator":
        _expect_kind(d, "image")
        hist = np.asarray(d["hist"], np.int64)
        acc = cls(hist.shape[0])
        acc.hist[...] = hist
        return acc

    def result(self) -> dict[str, np.ndarray]:
        v = np.arange(256)
        mean, std, count = [], [], []
        for h in self.hist.tolist():                    # Python ints: exact sums
            n = sum(h)
            if n == 0:
                raise StatsError("image statistics of no images are undefined")
            s1 = sum(i * c for i, c in zip(v.tolist(), h))
            s2 = sum(i * i * c for i, c in zip(v.tolist(), h))
            mean.append(s1 / (255 * n))
            std.append(float(np.sqrt((n * s2 - s1 * s1) / (n * n))) / 255)
            count.append(n)
        return {"mean": np.array(mean), "std": np.array(std), "count": np.array(count, np.int64)}
