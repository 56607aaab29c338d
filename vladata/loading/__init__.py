"""Loading a store for training: windows, their sampler, batches, mixtures of stores.

- :mod:`vladata.loading.windows`: :class:`WindowDataset`, the windows (history of observations,
  action chunk) over the segments or episodes of one store;
- :mod:`vladata.loading.sampler`: which windows each rank/worker reads, in what order, resumably;
- :mod:`vladata.loading.batching`: the fast batch path (``WindowDataset.loader``);
- :mod:`vladata.loading.mixture`: :class:`Mixture`, weighted draws over several stores, each
  normalised with its own statistics.

Import the submodule you need (``from vladata.loading.windows import WindowDataset``); this
package imports nothing, so reading a store's metadata does not load torch.
"""
