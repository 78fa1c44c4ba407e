"""Suite-wide settings: no model hub, ever (a stray hub id would otherwise spend minutes in DNS retries
and can silently return an empty tokenizer)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
