"""The canonical store: layout (``layout``), writing (``writer``) and fast reading (``shard_reader``)."""
