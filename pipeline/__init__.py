"""stylegen's shard pipeline: everything that happens to a shard, with no Ray in it."""

__version__ = "0.1.0"
