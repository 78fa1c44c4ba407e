"""Copy a preset's weights to object storage once (`stylegen models stage`, in pipeline.cli.models), so
cluster nodes never call the hub (pipeline.models.cache copies them from there, once per node).

Each component becomes a folder under `--to` with the hub repo's layout, holding only the files the
loaders read (the bf16 UNets of stable-cascade, safetensors only), or one file for the CSD checkpoint.
Every object carries its sha256 (the nodes verify their copies against it); an object already staged
with the same bytes is not uploaded again, one staged with other bytes is replaced, and an object under
a staged name that carries no sha256 (not staged by stylegen) is refused before anything is uploaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError

PRESETS = ("stable-cascade", "tiny")
# component -> where its staged URI goes in a run config
CONFIG_KEYS = {
    "prior": ("model_paths", "prior"),
    "decoder": ("model_paths", "decoder"),
    "csd": ("model_paths", "csd"),
    "clip": ("scoring.options", "clip_model"),
    "dino": ("scoring.options", "dino_model"),
    "aesthetic": ("scoring.options", "aesthetic_model"),
    "nsfw": ("scoring.options", "nsfw_model"),
}
SCORER_MODELS = ("clip", "dino", "aesthetic", "nsfw")
DEFAULT_SCORER_MODELS = ("clip", "dino")  # what the default scorers (clip, dino, csd, leakage) load
# weights the loaders never read (safetensors only) and the files the hub keeps for git
_NOT_LOADED = ["*.bin", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.ckpt", "*.pt", "*.pth", ".*"]
_TRANSFORMERS_FOLDERS = ("text_encoder", "tokenizer", "image_encoder", "feature_extractor")


class StageError(UserError, RuntimeError):
    """Staging cannot go on; the message names the component and what to do."""


@dataclass(frozen=True)
class Source:
    component: str  # a CONFIG_KEYS key: prior, decoder, csd, or a scorer model
    path: Path  # a local folder with the hub layout, or the CSD file
    name: str  # its folder (or file) name under --to
    origin: str  # where it came from: hub id or local path (for the printout)


def hub_patterns(component: str, variant: str | None = "bf16") -> tuple[list[str], list[str]]:
    """(allow, ignore) patterns for snapshot_download: the files the stable-cascade loaders read."""
    if component == "prior":
        allow = ["prior/config.json", f"prior/*.{variant}*", "image_encoder/*", "feature_extractor/*"]
    elif component == "decoder":
        allow = ["decoder/config.json", f"decoder/*.{variant}*", "vqgan/*"]
        allow += ["effnet_encoder.safetensors", "previewer.safetensors"]
    elif component == "aesthetic":  # the LAION MLP head: one state-dict file
        from pipeline.scoring.models import AESTHETIC_FILE

        return [AESTHETIC_FILE], [".*"]
    else:  # a scorer model (transformers folder)
        return ["*.json", "*.txt", "*.safetensors"], ["*.*16.*", *_NOT_LOADED]
    # the transformers parts and the VQGAN load their plain files; other variants would add gigabytes
    ignore = [f"{folder}/*.*16.*" for folder in (*_TRANSFORMERS_FOLDERS, "vqgan")]
    return allow + ["text_encoder/*", "tokenizer/*"], ignore + _NOT_LOADED


def _from_hub(component: str, repo: str) -> Path:
    from huggingface_hub import snapshot_download

    allow, ignore = hub_patterns(component)
    try:
        return Path(snapshot_download(repo, allow_patterns=allow, ignore_patterns=ignore))
    except Exception as error:  # gated repo without a token, offline, no network: say what to do
        first_line = str(error).splitlines()[0][:300] if str(error) else ""
        raise StageError(
            f"{component}: cannot download {repo} from the hub ({type(error).__name__}: {first_line}). "
            f"Gated repos need their licence accepted on https://huggingface.co/{repo} and HF_TOKEN set "
            f"(or `hf auth login`); without hub access pass --from {component}=LOCAL_DIR"
        ) from None


def _default_sources(preset: str, cache_dir: Path | None, scorers: tuple[str, ...]) -> dict[str, str | Path]:
    """component -> hub id or local path for the preset."""
    from pipeline.models.presets import DECODER_REPO, PRIOR_REPO
    from pipeline.models.tiny import ensure_tiny_cache
    from pipeline.scoring import models as scoring

    if preset == "tiny":
        root = ensure_tiny_cache(cache_dir)
        sources: dict[str, str | Path] = {
            "prior": root / "stable-cascade-prior",
            "decoder": root / "stable-cascade",
            "csd": root / "csd" / "csd.safetensors",
        }
        tiny_scoring = scoring.scoring_preset("tiny", cache_dir) if scorers else None  # built on first use
        for name in scorers:
            sources[name] = Path(getattr(tiny_scoring, CONFIG_KEYS[name][1]))
        return sources
    sources = {"prior": PRIOR_REPO, "decoder": DECODER_REPO}
    if os.environ.get("STYLEGEN_CSD"):
        sources["csd"] = Path(os.environ["STYLEGEN_CSD"])
    hub = {"clip": scoring.REAL_CLIP, "dino": scoring.REAL_DINO}
    hub |= {"aesthetic": scoring.REAL_AESTHETIC, "nsfw": scoring.REAL_NSFW}
    return sources | {name: hub[name] for name in scorers}


def resolve_sources(
    preset: str,
    overrides: dict[str, str],
    cache_dir: Path | None = None,
    scorers: tuple[str, ...] = DEFAULT_SCORER_MODELS,
) -> list[Source]:
    """Every component to stage as a local folder (hub repos are downloaded into the hub cache first)."""
    if preset not in PRESETS:
        raise StageError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - set(CONFIG_KEYS))
    if unknown:
        raise StageError(
            f"--from {unknown[0]}=...: unknown component; expected one of {', '.join(CONFIG_KEYS)}"
        )
    unknown = sorted(set(scorers) - set(SCORER_MODELS))
    if unknown:
        raise StageError(f"--scorers {unknown[0]}: unknown scorer model; expected some of {SCORER_MODELS}")
    wanted = {**_default_sources(preset, cache_dir, scorers), **overrides}
    resolved = []
    for component, origin in wanted.items():
        if isinstance(origin, str) and component not in overrides:  # a hub id
            local, name = _from_hub(component, origin), origin.rsplit("/", 1)[-1]
        else:
            local = Path(origin).expanduser()
            if not local.exists():
                raise StageError(f"{component}: {origin} does not exist")
            name = local.name
        name = f"csd/{name}" if component == "csd" else name
        resolved.append(Source(component, local, name, str(origin)))
    _check_layout(preset, resolved)
    names = [source.name for source in resolved]
    if len(set(names)) != len(names):
        raise StageError(f"two components would be staged under the same name: {sorted(names)}")
    return resolved


def _check_layout(preset: str, sources: list[Source]) -> None:
    """The prior and decoder folders hold every file the loader checks for (before anything uploads)."""
    from pipeline.models.presets import PresetConfig, required_files

    by_component = {source.component: source for source in sources}
    config = PresetConfig(
        name=preset,  # type: ignore[arg-type]
        prior=str(by_component["prior"].path),
        decoder=str(by_component["decoder"].path),
    )
    for component, (folder, relpath, _) in required_files(config).items():
        if not (Path(folder) / relpath).exists():
            owner = "prior" if folder == config.prior else "decoder"
            raise StageError(
                f"{component}: {relpath} missing in {by_component[owner].origin} "
                f"(a {owner} folder needs the hub repo's layout)"
            )
    weights = {  # the folders whose models load from safetensors, beside their config.json
        "prior": (config.prior_subfolder, "text_encoder", "image_encoder"),
        "decoder": (config.decoder_subfolder, "text_encoder", "vqgan"),
    }
    for owner, folders in weights.items():
        source = by_component[owner]
        for subfolder in folders:
            if not any((source.path / subfolder).glob("*.safetensors")):
                raise StageError(f"{owner}: no .safetensors weights in {subfolder}/ of {source.origin}")
        if not _has_tokenizer(source.path / "tokenizer"):
            raise StageError(
                f"{owner}: tokenizer/ of {source.origin} has neither tokenizer.json nor vocab.json and "
                "merges.txt (the CLIP tokenizer loads from those)"
            )
    for source in sources:
        if source.component == "csd" and not source.path.is_file():
            raise StageError(f"csd: {source.origin} is not a checkpoint file")
        if source.component != "csd" and not source.path.is_dir():
            raise StageError(f"{source.component}: {source.origin} is not a folder with the hub layout")
        if source.component in SCORER_MODELS:
            _check_scorer_model(source)


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or all(
        (folder / name).is_file() for name in ("vocab.json", "merges.txt")
    )


def _check_scorer_model(source: Source) -> None:
    """A scorer model folder holds what its loader reads: the aesthetic head's one file, else a
    transformers model (config.json and safetensors weights; CLIP's tokenizer too)."""
    from pipeline.scoring.models import AESTHETIC_FILE

    if source.component == "aesthetic":
        needed = [AESTHETIC_FILE] if not (source.path / AESTHETIC_FILE).is_file() else []
    else:
        needed = [name for name in ("config.json",) if not (source.path / name).is_file()]
        needed += [] if any(source.path.glob("*.safetensors")) else ["*.safetensors weights"]
        if source.component == "clip" and not _has_tokenizer(source.path):
            needed.append("tokenizer.json (or vocab.json and merges.txt)")
    if needed:
        raise StageError(
            f"{source.component}: {', '.join(needed)} missing in {source.origin} (a {source.component} "
            "model folder as the hub has it, e.g. from `hf download`)"
        )


@dataclass
class StageResult:
    uris: dict[str, str]  # component -> staged URI
    uploaded: int  # files
    skipped: int  # files already staged with the same sha256
    bytes_uploaded: int


def check_target(to: str) -> None:
    """Staging goes to S3 only (the nodes copy from there): said before any model is built or fetched."""
    if not to.startswith("s3://"):
        raise StageError(f"--to {to!r}: expected an s3://bucket/prefix/ URI")


def stage(sources: list[Source], to: str, s3_options: dict | None = None, echo=print) -> StageResult:
    """Upload each source under `to` (s3://bucket/prefix/); skip objects already holding the same bytes."""
    from pipeline.storage import LocalFile, open_store

    check_target(to)
    store = open_store(to, **(s3_options or {}))
    result = StageResult({}, 0, 0, 0)
    planned = {source.name: _planned_files(source) for source in sources}
    staged = {key: store.head(key) for files in planned.values() for key in files}
    foreign = [key for key, info in staged.items() if info is not None and not info.sha256]
    if foreign:  # a staging records each object's sha256: one without it is someone else's
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise StageError(
            f"{store.url(foreign[0])}{more} exists but was not staged by stylegen (it has no sha256 "
            "metadata), so nothing was uploaded: remove it, or choose another --to"
        )
    for source in sources:
        for key, path in planned[source.name].items():
            local = LocalFile.from_path(path)
            info = staged[key]
            if info is not None and info.size == local.size and info.sha256 == local.sha256:
                result.skipped += 1
                continue
            replaces = " (replaces an earlier staging)" if info is not None else ""
            echo(f"uploading {store.url(key)} ({local.size / 1e6:.1f} MB){replaces}")
            store.put_file(key, path, sha256=local.sha256)  # verifies the stored size and sha256
            result.uploaded += 1
            result.bytes_uploaded += local.size
        uri = store.url(source.name) + ("" if source.path.is_file() else "/")
        result.uris[source.component] = uri
        if source.path.is_dir():
            ours = planned[source.name]
            extra = [info.key for info in store.list(f"{source.name}/") if info.key not in ours]
            if extra:
                echo(
                    f"warning: {len(extra)} other object(s) under {uri} (e.g. {extra[0]}) are not part of "
                    "this staging; every node would copy them too: remove them if they are stale"
                )
    return result


def _planned_files(source: Source) -> dict[str, Path]:
    """object key under --to -> local file, for one source."""
    if source.path.is_file():
        return {source.name: source.path}
    return {f"{source.name}/{path.relative_to(source.path).as_posix()}": path for path in _files(source.path)}


def _files(folder: Path) -> list[Path]:
    """Every file under `folder` except hidden ones (.gitattributes, .cache/ of a hub download)."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def config_snippet(preset: str, uris: dict[str, str]) -> str:
    """The run-config YAML that points every staged component at its S3 copy."""
    import yaml

    config: dict = {"preset": preset}
    for component, uri in uris.items():
        section, key = CONFIG_KEYS[component]
        target = config
        for part in section.split("."):
            target = target.setdefault(part, {})
        target[key] = uri
    return yaml.safe_dump(config, sort_keys=False)
