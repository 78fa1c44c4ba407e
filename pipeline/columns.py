"""The column families of a shard parquet (pipeline.shards.table), by name prefix. Kept apart so the
readers (select, dedup, report) know them without importing the shard writers (webdataset, torch)."""

SCORE_PREFIX = "score_"  # score_<name>: float64, one per score of the configured scorers
TIME_PREFIX = "time_"  # time_<name>: float64 seconds
EMBEDDING_PREFIX = "embedding_"  # embedding_<name>: list<halffloat>, per-sample vectors (dedup)
