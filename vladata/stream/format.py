"""What the export and the reader of the streaming form share: names, version, errors."""

from __future__ import annotations

from vladata.errors import StoreError

INDEX = "index.json"
FORMAT, FORMAT_VERSION = "vlakit-wds", 1


class StreamFormatError(StoreError):
    """A tar shard or index of the streaming form is missing, corrupt or not what index.json says."""
