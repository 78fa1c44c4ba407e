"""Pre-flight: every mistake a run config can hold, found before anything is written, Ray starts or an
actor loads a model. Each check raises ConfigError (exit 2) naming the key.

Preset names, model_paths keys and credentials are RunConfig's own checks (pipeline/run_config.py);
these are the ones that need the scorer registry, the sampler settings, the model folders or the
manifest's columns.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.run_config import ConfigError, RunConfig, describe_errors


def check_config(config: RunConfig, *, local_models: bool = False) -> None:
    """Every mistake a config can hold, found here: before anything is written, Ray starts or an actor
    loads a model (bad filter rules, sampler settings, scoring options; with `local_models`, that the
    local model folders and CSD file exist). Preset names and model_paths keys are RunConfig's checks."""
    from pydantic import ValidationError

    from pipeline.scoring.registry import ScorerError, resolve_scorers

    try:  # every scorer named must be installed, whether or not scoring is enabled (the schema lists them)
        scorers = resolve_scorers(config.scoring.scorers)
    except ScorerError as error:
        raise ConfigError(f"scoring.scorers: {error}") from None
    if config.scoring.filters:
        from pipeline.scoring.rules import FilterRules, RuleError

        try:
            FilterRules.parse(list(config.scoring.filters), set(scorers.scores))
        except RuleError as error:
            raise ConfigError(f"scoring.filters: {error}") from None
    if config.generator.kind == "rbmod" and config.rbmod:
        from pipeline.rbmod.settings import RBModSettings

        try:
            RBModSettings.model_validate(config.rbmod)
        except ValidationError as error:
            raise ConfigError(_problems("rbmod", error, RBModSettings)) from None
    if config.scoring.enabled:
        _check_scoring(config)
    if config.generator.kind == "rbmod" and local_models:
        _check_model_paths(config.model_paths)


def _check_scoring(config: RunConfig) -> None:
    from pydantic import ValidationError

    from pipeline.scoring.models import PRESETS, ScoringConfig

    preset = config.scoring.preset or config.preset
    if preset not in PRESETS:
        raise ConfigError(
            f"scoring.preset: unknown scoring preset {preset!r}; expected one of {', '.join(PRESETS)}"
        )
    known = sorted(ScoringConfig.model_fields)
    unknown = sorted(set(config.scoring.options) - set(known))
    if unknown:
        raise ConfigError(f"scoring.options: unknown option(s) {unknown}; expected some of {known}")
    try:
        ScoringConfig.model_validate({"clip_model": "-", "dino_model": "-", **config.scoring.options})
    except ValidationError as error:
        raise ConfigError(_problems("scoring.options", error, ScoringConfig)) from None


def _check_model_paths(paths: dict[str, str]) -> None:
    """Local model folders (and the CSD file) must exist here; hub ids are resolved by the actors."""
    from pipeline.models.presets import is_local_source

    for key in ("prior", "decoder", "csd"):
        source = paths.get(key)
        if source and is_local_source(source) and not Path(source).expanduser().exists():
            kind = "file" if key == "csd" else "folder"
            raise ConfigError(
                f"model_paths.{key}: local {kind} {source} does not exist (a hub id reads 'org/name')"
            )


def check_staged_models(config: RunConfig) -> None:
    """Every s3:// model source (model_paths, scorer models) has staged objects: one LIST each, so a
    wrong URI is one error here instead of one per actor."""
    if config.generator.kind != "rbmod":
        return
    from pipeline.models.cache import ModelCacheError, is_s3_uri, staged_objects

    sources = {f"model_paths.{key}": value for key, value in config.model_paths.items()}
    if config.scoring.enabled:
        sources |= {f"scoring.options.{key}": value for key, value in config.scoring.options.items()}
    for where, source in sources.items():
        if is_s3_uri(source):
            try:
                staged_objects(source, config.storage)
            except ModelCacheError as error:
                raise ConfigError(f"{where}: {error}") from None


def _problems(section: str, error, model) -> str:
    return describe_errors(error, model, prefix=f"{section}.")


def check_caption(config: RunConfig, columns: list[str]) -> None:
    """The caption template's {extra.NAME} fields must be columns of this manifest."""
    from pipeline.captions import CaptionError, check_template, extra_columns

    try:
        check_template(config.caption.template, extra_columns(columns))
    except CaptionError as error:
        raise ConfigError(str(error)) from None


def check_quota(config: RunConfig, schema) -> None:
    """A quota's groups (`quota.per`) must be a column of this manifest holding plain values."""
    import pyarrow as pa

    from manifests.schema import QUOTA_COLUMNS

    if config.quota is None:
        return
    per = config.quota.per
    names = [name for name in schema.names if name not in ("uid", "row", *QUOTA_COLUMNS)]
    if per not in schema.names or per in ("uid", "row"):
        raise ConfigError(
            f"quota.per: {per!r} is not a column of the manifest; group by one of {', '.join(names)}"
        )
    if pa.types.is_nested(schema.field(per).type):
        raise ConfigError(
            f"quota.per: column {per!r} holds lists or structs; group by a column of plain values"
        )
