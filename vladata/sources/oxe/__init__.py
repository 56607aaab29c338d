"""Open X-Embodiment / RLDS datasets (TFDS TFRecord shards), read without TensorFlow.

- :mod:`.tfrecord` -- record framing with CRC32C checks
- :mod:`.example_proto` -- ``tf.train.Example`` in a private protobuf pool
- :mod:`.tfds` -- ``dataset_info.json`` and ``features.json``
- :mod:`.decode` -- one serialized episode -> arrays
- :mod:`.standardize` -- the per-dataset table and transforms (Octo/OpenVLA conventions)
- :mod:`.mapping` -- which canonical features come from which keys
- :mod:`.scan` -- the plan scan of one shard
- :mod:`.source` -- :class:`OxeSource`
"""

from vladata.sources.oxe.source import OxeSource
from vladata.sources.oxe.standardize import OXE_TABLE, OxeConfig

__all__ = ["OxeSource", "OXE_TABLE", "OxeConfig"]
