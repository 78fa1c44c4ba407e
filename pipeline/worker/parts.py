"""A worker's parts, loaded once per process from a RunConfig: the store, the generator, and the scorer
and filter rules when scoring is enabled."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.run_config import RunConfig
from pipeline.storage import open_store


@dataclass
class WorkerParts:
    generator: Any
    scorer: Any  # None when scoring is disabled
    rules: Any  # None when scoring is disabled
    store: Any
    model_info: dict[str, Any]


def build_parts(config: RunConfig, output: str, *, device: str | None = None) -> WorkerParts:
    """Open the store and load the generator, scorer and filter rules the config names (once per process)."""
    store = open_store(output, **config.storage)
    cache_dir = Path(config.model_cache_dir) if config.model_cache_dir else None
    csd = None
    if config.generator.kind == "fake":
        from pipeline.models.fake_generator import FakeGenerator

        generator = FakeGenerator(config.generator.fake)
        model_info: dict[str, Any] = {"generator": "fake", "size": config.generator.fake.size}
    else:
        from pipeline.models.loading import load_preset
        from pipeline.rbmod.generate import RBModGenerator, RBModSettings
        from pipeline.scoring.scorer import csd_from_preset

        models = load_preset(
            config.preset,
            device=device,
            paths=config.model_paths or None,
            cache_dir=cache_dir,
            s3_options=config.storage,
        )
        generator = RBModGenerator(models, RBModSettings(**config.rbmod))
        model_info = {"generator": "rbmod", **models.config.model_dump(mode="json")}
        csd = csd_from_preset(models)  # the loaded CSD is shared with the scorer (None: CLIP fallback)
    scorer = rules = None
    if config.scoring.enabled:
        from pipeline.models.cache import with_local_copies
        from pipeline.scoring.models import scoring_preset
        from pipeline.scoring.rules import FilterRules
        from pipeline.scoring.scorer import Scorer

        # s3:// scorer models (clip_model, dino_model) load from this node's copy; metadata keeps the URIs
        options = with_local_copies(config.scoring.options, cache_dir, config.storage)
        scoring = scoring_preset(
            config.scoring.preset or config.preset,
            cache_dir,
            scorers=config.scoring.scorers,
            **options,
        )
        scorer = Scorer(scoring, device=device, csd=csd)
        rules = FilterRules.parse(list(config.scoring.filters), set(scorer.names))
        model_info["scoring"] = scoring.model_copy(update=config.scoring.options).model_dump(mode="json")
    return WorkerParts(generator, scorer, rules, store, model_info)
