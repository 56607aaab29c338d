"""Exact per-dimension statistics of low-dimensional features, in bounded memory, mergeable.

- :mod:`vladata.stats.exact` -- the two-pass exact quantiles (:class:`StatsAccumulator`,
  :class:`QuantileRefiner`), count/min/max/mean/std, :func:`compute_stats`;
- :mod:`vladata.stats.images` -- per-channel image mean/std (:class:`ImageStatsAccumulator`);
- :mod:`vladata.stats.io` -- ``meta/stats.json`` (:func:`stats_to_json`, :func:`stats_from_json`).
"""

from vladata.stats.exact import (DEFAULT_QUANTILES, FORMAT_VERSION, QuantileRefiner,
                                 StatsAccumulator, compute_stats, float_keys, keys_to_floats,
                                 lerp_like_numpy, locate_nonfinite, parse_quantiles, quantile_key,
                                 rank_plan)
from vladata.stats.images import ImageStatsAccumulator
from vladata.stats.io import stats_from_json, stats_to_json

__all__ = ["quantile_key", "parse_quantiles", "float_keys", "keys_to_floats", "StatsAccumulator",
           "QuantileRefiner", "compute_stats", "ImageStatsAccumulator", "stats_to_json",
           "stats_from_json", "locate_nonfinite", "lerp_like_numpy", "rank_plan",
           "FORMAT_VERSION", "DEFAULT_QUANTILES"]
