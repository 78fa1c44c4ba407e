"""RunConfig: everything a `stylegen run` needs besides the manifest and the output URI.

Loaded from an optional YAML file, then CLI flags on top. Two views matter for resume:
- the canonical JSON (sorted keys, fixed separators) stored in run.json, and
- the *identity* part, the keys that change what lands in the output (models, sampler settings,
  scoring, filters, image encoding, shard size). Its sha256 is the config fingerprint. Operational
  keys (batch size, deadlines, retries, storage endpoint, fake latency) may change between a run and
  its resume without refusing it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import UserError
from pipeline.json_format import canonical_json, flatten
from pipeline.models.fake_config import FakeGeneratorConfig
from pipeline.scoring.registry import DEFAULT_SCORERS
from pipeline.storage.s3_config import looks_like_credential

# Keys (dotted paths) that never change the output: left out of the fingerprint.
OPERATIONAL_KEYS = frozenset(
    {
        "execution",
        "storage",
        "generator.fake.latency_s",
        "generator.fake.batch_latency_s",
        "generator.fake.hang_uids",
        "generator.fake.hang_flag_dir",
        "generator.fake.hang_s",
        "generator.fake.hang_every_time",
    }
)


class ConfigError(UserError, ValueError):
    """A bad config file or flag; the message names the file and the key."""

    exit_code = 2


class _Section(BaseModel):
    # hide_input_in_errors: a mistaken credential in a config must not be echoed in an error.
    # allow_inf_nan=False: `inf` would pass every bound and fail the run much later (or in run.json).
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True, allow_inf_nan=False)


class GeneratorConfig(_Section):
    kind: Literal["rbmod", "fake"] = "rbmod"
    fake: FakeGeneratorConfig = FakeGeneratorConfig()


class ScoringSection(_Section):
    enabled: bool = True
    preset: str | None = None  # scoring models: "tiny" | "real"; default follows the run's preset
    # built-in or third-party (entry-point group stylegen.scorers) scorers; see pipeline.scoring.registry
    scorers: tuple[str, ...] = DEFAULT_SCORERS
    options: dict[str, Any] = {}  # overrides of pipeline.scoring's ScoringConfig fields
    filters: tuple[str, ...] = ()  # e.g. "clip_t >= 0.25"; all must pass

    @model_validator(mode="after")
    def _filters_need_scores(self) -> ScoringSection:
        if self.filters and not self.enabled:
            raise ValueError("filters need scores: set scoring.enabled to true or remove scoring.filters")
        if "scorers" in self.options:
            raise ValueError("name the scorers in scoring.scorers, not scoring.options.scorers")
        return self


class ImageSection(_Section):
    format: Literal["png", "jpg", "webp"] = "png"
    quality: int = Field(95, ge=1, le=100)


class CaptionSection(_Section):
    """Each sample's `{uid}.txt` (pipeline.captions): the prompt, or a template over the row's fields."""

    template: str = "{prompt}"  # e.g. "{prompt}, in the style of {extra.artist}"

    @field_validator("template")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        from pipeline.captions import check_template

        return check_template(value)  # extras are checked against the manifest when it is read


class QuotaSection(_Section):
    """A target of kept samples per group, reached by reseeding short groups (pipeline/run/quota.py)."""

    per: str = "style"  # style | prompt | content | a manifest column
    kept: int = Field(ge=1)  # kept samples wanted per group
    max_rounds: int = Field(3, ge=1)  # reseeding rounds after the planned rows
    max_factor: float = Field(4.0, ge=1.0)  # rows per group, in all, at most this x its planned rows

    def group_of(self, row: dict[str, Any]) -> str:
        """The group a plan row (as a dict) belongs to; the driver and the workers use this one function."""
        return self.group_key(row.get(self.per))

    @staticmethod
    def group_key(value: Any) -> str:
        """The group of a `per` column value (null: the group "")."""
        return "" if value is None else str(value)


class ExecutionSection(_Section):
    """How the run executes; none of it changes the output."""

    batch_size: int = Field(4, ge=1)
    max_attempts: int = Field(3, ge=1)  # per shard, then its rows are recorded as failed
    deadline_factor: float = Field(4.0, ge=1.0)  # deadline = factor x observed s/image x rows
    first_deadline_s: float = Field(1800.0, gt=0)  # before any shard finished (includes warm-up)
    min_deadline_s: float = Field(120.0, gt=0)  # floor once per-image times are known
    actor_start_timeout_s: float = Field(900.0, gt=0)  # model loading; a shard never started
    # The pool's target size (`--actors` wins); default: every GPU the cluster has at the start. Actors
    # beyond the GPUs present stay pending: the demand the Ray autoscaler / KubeRay add GPU nodes for.
    max_actors: int | None = Field(None, ge=1)
    capacity_timeout_s: float = Field(1800.0, gt=0)  # no actor ready this long with work left: stop
    drain_s: float = Field(20.0, ge=0)  # on SIGTERM/SIGINT, how long commits in progress may finish
    progress_interval_s: float = Field(30.0, gt=0)  # one key=value progress line when not a terminal
    log_upload_s: float = Field(60.0, gt=0)  # the run log reaches a remote output this often
    upload_queue_shards: int = Field(1, ge=1, le=4)  # finished shards waiting for upload, per actor
    # Fixed, not derived from the pool size: on CPU, torch rounds differently with another thread count,
    # so a run with 1 actor and one with 2 would otherwise make different images.
    torch_threads: int = Field(1, ge=1)
    storage_outage_s: float = Field(300.0, gt=0)  # storage failing this long stops the run (uncharged)
    lease_ttl_s: float = Field(120.0, gt=0)  # a driver's lease on its output lapses this long unrenewed
    wait_for_lease_s: float = Field(0.0, ge=0)  # how long a driver waits for another's lease to end
    isolate_culprits: bool = True  # a shard failing every attempt reruns row by row: only culprits fail
    max_input_mib: int = Field(256, ge=1)  # a style/content file or object over this fails its row unread


class RunConfig(_Section):
    preset: str = "tiny"
    model_paths: dict[str, str] = {}  # stable-cascade component folders/ids (see pipeline.models.presets)
    model_cache_dir: str | None = None
    rbmod: dict[str, Any] = {}  # overrides of RBModSettings fields
    scoring: ScoringSection = ScoringSection()
    image: ImageSection = ImageSection()
    caption: CaptionSection = CaptionSection()
    keep_rejected: bool = False
    shard_size: int = Field(64, ge=1)
    plan_order: Literal["style", "uid"] = "style"
    dedupe: bool = False  # keep the first of rows with the same uid instead of refusing the manifest
    generator: GeneratorConfig = GeneratorConfig()
    quota: QuotaSection | None = None  # absent: one image per manifest row, as planned
    execution: ExecutionSection = ExecutionSection()
    storage: dict[str, Any] = {}  # options for pipeline.storage.open_store (endpoint, addressing, ...)

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data: Any) -> Any:
        """Refused here, before anything else, so no credential ever reaches run.json or a log."""
        if problem := credential_problem(data):
            raise ValueError(problem)
        return data

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        from pipeline.models.presets import PRESET_NAMES

        if value not in PRESET_NAMES:
            raise ValueError(
                f"unknown preset {value!r}; expected one of {', '.join(map(repr, PRESET_NAMES))}"
            )
        return value

    @field_validator("model_paths")
    @classmethod
    def _known_path_keys(cls, value: dict[str, str]) -> dict[str, str]:
        from pipeline.models.presets import PATH_KEYS

        unknown = sorted(set(value) - PATH_KEYS)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; expected some of {sorted(PATH_KEYS)}")
        return value

    # --- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
        """YAML file (optional) with `overrides` (dotted keys -> values, e.g. CLI flags) on top."""
        data: dict[str, Any] = {}
        where = "defaults"
        if path is not None:
            where = f"config file {path}"
            data = _read_yaml(Path(path))
        for dotted, value in (overrides or {}).items():
            _set_dotted(data, dotted, value)
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise ConfigError(f"{where}: {describe_errors(error, cls)}") from None

    # --- canonical forms -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        if data["quota"] is None:  # a run without quotas keeps the config (and fingerprint) it always had
            del data["quota"]
        return data

    def canonical_json(self) -> str:
        return canonical_json(self.to_dict())

    def identity(self) -> dict[str, Any]:
        """The output-defining part of the config (what the fingerprint covers)."""
        return _drop_keys(self.to_dict(), OPERATIONAL_KEYS)

    def fingerprint(self) -> str:
        return config_fingerprint(self.to_dict())


def config_fingerprint(config_dict: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of a config dict's identity part (works on run.json's copy)."""
    identity = _drop_keys(config_dict, OPERATIONAL_KEYS)
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two configs' identity parts: 'key: old -> new'."""
    before = flatten(_drop_keys(old, OPERATIONAL_KEYS))
    after = flatten(_drop_keys(new, OPERATIONAL_KEYS))
    missing = object()
    changes = []
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key, missing), after.get(key, missing)
        if a != b:
            show = lambda v: "<unset>" if v is missing else json.dumps(v)  # noqa: E731
            changes.append(f"{key}: {show(a)} -> {show(b)}")
    return changes


# --- error messages --------------------------------------------------------------------------------

# What a value of each kind looks like, in the words of a YAML file.
_EXPECTED = {
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "string": "text",
    "tuple": "a list (YAML: [a, b], or one '- item' per line)",
    "list": "a list (YAML: [a, b], or one '- item' per line)",
    "dict": "a mapping (YAML: 'key: value' lines)",
    "model": "a mapping (YAML: 'key: value' lines)",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_BOUND_KEYS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


def describe_errors(error: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """pydantic's errors as what the file should say instead: the key, what is expected there and what
    was given, and "did you mean" for a mistyped key."""
    return "; ".join(_describe(item, model, prefix) for item in error.errors())


def _describe(item: dict[str, Any], model: type[BaseModel], prefix: str) -> str:
    from pipeline.suggest import did_you_mean

    loc = [str(part) for part in item["loc"]]
    key = prefix + ".".join(loc) if loc else (prefix.rstrip(".") or "the config")
    kind, given, context = item["type"], item.get("input"), item.get("ctx") or {}
    if kind == "extra_forbidden":
        known = _field_names(model, loc[:-1])
        hint = did_you_mean(loc[-1], known)
        listed = f"; known keys here: {', '.join(sorted(known))}" if known else ""
        return f"{key}: unknown key{hint}{listed}"
    if kind == "missing":
        return f"{key}: required, but missing"
    if kind == "literal_error":
        return f"{key}: expected one of {context.get('expected')}, got {given!r}"
    if kind in _BOUNDS:
        return f"{key}: must be {_BOUNDS[kind]} {context.get(_BOUND_KEYS[kind])}, got {given!r}"
    base = kind.removesuffix("_type").removesuffix("_parsing").removesuffix("_from_float")
    if base in _EXPECTED:
        return f"{key}: expected {_EXPECTED[base]}, got {given!r}"
    if kind == "value_error":
        return f"{key}: {str(item['msg']).removeprefix('Value error, ')}"
    return f"{key}: {item['msg']}"


def _field_names(model: type[BaseModel], path: list[str]) -> list[str]:
    """The keys a section accepts (the model reached by following `path` from `model`)."""
    for part in path:
        field = model.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


# --- credentials ---------------------------------------------------------------------------------

_USER_INFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@")  # scheme://user[:password]@host


def credential_problem(data: Any, prefix: str = "") -> str | None:
    """Why a raw config holds a credential (a credential-named key, or user info in a URL), naming
    the key but never the value; None when it holds none. Walks every mapping and list."""
    if isinstance(data, dict):
        for key, value in data.items():
            dotted = f"{prefix}{key}"
            if looks_like_credential(key):
                return (
                    f"{dotted} looks like a credential; credentials come only from the environment "
                    "(the AWS credential chain, the Hugging Face login) and are never stored in the config "
                    "or run.json"
                )
            if problem := credential_problem(value, f"{dotted}."):
                return problem
    elif isinstance(data, list | tuple):
        for index, value in enumerate(data):
            if problem := credential_problem(value, f"{prefix}{index}."):
                return problem
    elif isinstance(data, str) and _USER_INFO.match(data.strip()):
        return (
            f"{prefix.rstrip('.')} holds a URL with a user name or password (user:password@host); "
            "remove it: credentials come only from the environment and are never stored"
        )
    return None


# --- helpers ---------------------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping, got {type(loaded).__name__}")
    return loaded


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {part} is not a mapping")
    node[leaf] = value


def _drop_keys(data: dict[str, Any], dotted_keys: frozenset[str], prefix: str = "") -> dict[str, Any]:
    kept = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if path in dotted_keys:
            continue
        kept[key] = _drop_keys(value, dotted_keys, f"{path}.") if isinstance(value, dict) else value
    return kept
