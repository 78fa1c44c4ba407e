"""The read side of an output: its run record, its shard tables and what its commit markers count."""
