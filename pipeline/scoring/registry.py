"""The scorer interface and the registry of scorers: built-ins and third-party ones.

A scorer is a class deriving from `ScoreModule` that declares

- `name`: how the config names it (`scoring.scorers: [clip, dino, aesthetic, my_scorer]`);
- `needs`: what it reads, from `INPUTS` (the sample's image, prompt, style/content reference, and the
  shared embeddings the host computes once per batch for every scorer that asks: the CLIP image and
  text embeddings of the output, its DINO CLS and CSD embeddings);
- `outputs`: the score names it writes, one float (or None: does not apply) per sample. Scores become
  `score_<name>` parquet columns, the sample json's `scores`, filter-rule names, report histograms and
  `stylegen select --by` keys, exactly like the built-in ones;
- `embeddings`: the per-sample embedding names it writes (`embedding_<name>` parquet columns, float16
  vectors, for `stylegen dedup --by <name>`);

and implements `score(batch) -> {output name: [value per sample], embedding name: array (B, D)}`.

Batch invariance is part of the contract: sample i's values must depend on sample i's inputs only,
bit for bit, whatever else is in the batch (the same row must give the same bytes in every run). On
CPU, where BLAS kernels round differently by batch size, the host hands scorers one sample at a time;
on GPU whole batches (a scorer must not mix samples, e.g. no batch statistics).

Third-party scorers are found through the Python entry-point group `stylegen.scorers`, e.g. in the
plug-in package's pyproject.toml:

    [project.entry-points."stylegen.scorers"]
    sharpness = "my_package.scoring:Sharpness"

and enabled by name in the run config (`scoring.scorers`). Their options come from
`scoring.options.scorer_options.<name>` (`context.options`). This module stays light: importing it
pulls in neither torch nor transformers.
"""

from __future__ import annotations

import importlib
import keyword
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

ENTRY_POINT_GROUP = "stylegen.scorers"
INPUTS = frozenset(
    {"image", "prompt", "style", "content", "clip_image", "clip_text", "dino_image", "csd_image"}
)
# the inputs computed with the shared CLIP and DINO models (a scorer needing one loads them at start)
MODEL_INPUTS = frozenset({"clip_image", "clip_text", "dino_image"})
# Built-ins by name -> "module:Class" (imported on use, so this module stays light).
BUILTINS = {
    "clip": "pipeline.scoring.builtins:ClipScores",
    "dino": "pipeline.scoring.builtins:DinoStyle",
    "csd": "pipeline.scoring.builtins:CsdStyle",
    "leakage": "pipeline.scoring.builtins:Leakage",
    "aesthetic": "pipeline.scoring.builtins:Aesthetic",
    "nsfw": "pipeline.scoring.builtins:Nsfw",
    "brightness": "pipeline.scoring.builtins:Brightness",
    "dino_embedding": "pipeline.scoring.builtins:DinoEmbedding",
    "clip_embedding": "pipeline.scoring.builtins:ClipEmbedding",
}
# What a run scores when the config does not say: the similarity scores and the near-duplicate
# embedding (free: the DINO embedding is computed anyway). aesthetic and nsfw need their own weights.
DEFAULT_SCORERS = ("clip", "dino", "csd", "leakage", "dino_embedding")


class ScorerError(ValueError):
    """An unknown or malformed scorer; the message names it and what is wrong."""


@dataclass(frozen=True)
class ScorerContext:
    """What a scorer gets at construction: the scoring config, the shared loaded models (CLIP, DINO,
    device, dtype), the generation preset's CSD module (or None) and its own options."""

    config: Any  # pipeline.scoring.models.ScoringConfig
    models: Any  # pipeline.scoring.models.ScoringModels
    csd: Any = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self):
        return self.models.device

    @property
    def dtype(self):
        return self.models.dtype


class ScoreModule:
    """Base class of every scorer; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    outputs: ClassVar[tuple[str, ...]] = ()
    embeddings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, context: ScorerContext):
        self.context = context

    @property
    def produces(self) -> tuple[str, ...]:
        """The scores this instance computes (a subset of `outputs`: csd_style needs a CSD module)."""
        return self.outputs

    def score(self, batch) -> dict[str, Any]:  # batch: pipeline.scoring.scorer.ScoringBatch
        raise NotImplementedError


def available_scorers() -> list[str]:
    """Every scorer name: the built-ins, then the installed entry points."""
    return list(BUILTINS) + sorted(point.name for point in entry_points(group=ENTRY_POINT_GROUP))


def scorer_class(name: str) -> type[ScoreModule]:
    """The class registered under `name`: a built-in, else an entry point of `stylegen.scorers`."""
    if name in BUILTINS:
        module, _, attribute = BUILTINS[name].partition(":")
        cls = getattr(importlib.import_module(module), attribute)
    else:
        points = [point for point in entry_points(group=ENTRY_POINT_GROUP) if point.name == name]
        if not points:
            raise ScorerError(
                f"unknown scorer {name!r}; available: {', '.join(available_scorers())} "
                f"(third-party scorers register in the {ENTRY_POINT_GROUP!r} entry-point group)"
            )
        if len({point.value for point in points}) > 1:
            raise ScorerError(f"scorer {name!r} is registered by several packages: {points}")
        try:
            cls = points[0].load()
        except Exception as error:
            raise ScorerError(f"scorer {name!r} ({points[0].value}) cannot be imported: {error}") from error
    check_scorer_class(name, cls)
    return cls


def check_scorer_class(name: str, cls: Any) -> None:
    where = f"scorer {name!r} ({getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)})"
    if not (isinstance(cls, type) and issubclass(cls, ScoreModule)):
        raise ScorerError(f"{where} is not a subclass of pipeline.scoring.registry.ScoreModule")
    if cls.name != name:
        raise ScorerError(f"{where} declares name {cls.name!r}, registered as {name!r}")
    unknown = set(cls.needs) - INPUTS
    if unknown:
        raise ScorerError(f"{where} needs unknown inputs {sorted(unknown)}; known: {sorted(INPUTS)}")
    if not cls.outputs and not cls.embeddings:
        raise ScorerError(f"{where} declares no outputs and no embeddings")
    for output in (*cls.outputs, *cls.embeddings):
        if not isinstance(output, str) or not output.isidentifier() or keyword.iskeyword(output):
            raise ScorerError(f"{where}: output {output!r} must be a plain identifier (filter rules name it)")


@dataclass(frozen=True)
class ScorerSet:
    """The configured scorers' classes and what they write, in config order (no model is loaded)."""

    classes: tuple[type[ScoreModule], ...]

    @property
    def scores(self) -> tuple[str, ...]:
        return tuple(name for cls in self.classes for name in cls.outputs)

    @property
    def embeddings(self) -> tuple[str, ...]:
        return tuple(name for cls in self.classes for name in cls.embeddings)


def resolve_scorers(names: Iterable[str]) -> ScorerSet:
    """Look up every configured scorer; refuse unknown names, repeats and clashing outputs."""
    names = list(names)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ScorerError(f"scoring.scorers names {repeated} more than once")
    classes = tuple(scorer_class(name) for name in names)
    for kind in ("outputs", "embeddings"):
        owner: dict[str, str] = {}
        for cls in classes:
            for output in getattr(cls, kind):
                if output in owner:
                    raise ScorerError(
                        f"scorers {owner[output]!r} and {cls.name!r} both write the {kind[:-1]} {output!r}"
                    )
                owner[output] = cls.name
    return ScorerSet(classes)
