"""A datastore build as stages: prepare → warmup → featurize shards → index.

The CLI runs the stages in a row (``build_all``); workers run the same functions, one
leased unit at a time. Every stage is idempotent and writes its outputs atomically, so a
killed stage is simply run again, and two workers produce the same bytes as one.

Warmup and featurize are pulled in only by methods that run the warmup checkpoints or read
gradient features (``needs_warmup``): a store for BM25, DSIR, random or RDS+ goes
prepare → index (its manifest, no features), and one for the first three in seconds and
without any model (``methods_needing_a_model``).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gradstore.config import BuildConfig
from gradstore.errors import (
    ConflictError,
    InvalidInputError,
    ManifestMismatchError,
    NotReadyError,
)
from gradstore.examples import iter_jsonl
from gradstore.features.checkpoints import (
    WarmupCheckpoint,
    checkpoint_weights,
    import_reference_checkpoints,
    load_checkpoints,
)
from gradstore.features.modeling import load_tokenizer, model_content_hash
from gradstore.features.tokenization import ExampleEncoder, SkippedExample, tokenizer_hash
from gradstore.files import (
    atomic_save_npy,
    atomic_write_file,
    atomic_write_json,
    read_json,
    remove_stale_temporaries,
    sha256_file,
)
from gradstore.selection.needs import (
    methods_needing_a_model,
    needs_warmup,
    store_methods,
)
from gradstore.store.codes import FeatureCode, float_dtype, is_code
from gradstore.store.datastore import (
    BUILD_SPEC,
    SCHEMA_VERSION,
    ArtifactEntry,
    BuildSpec,
    CheckpointEntry,
    Datastore,
    FileEntry,
    IndexEntry,
    Manifest,
    ModelInfo,
    Shard,
    TokenStore,
    TokenWriter,
    gradient_artifact,
    load_build_spec,
    manifest_lock,
    needed_model,
    read_manifest,
    utc_now,
    write_manifest,
)
from gradstore.store.index import (
    build_faiss_index_streaming,
    is_exact,
    train_sample_rows,
    write_index,
)
from gradstore.store.model_pool import store_model
from gradstore.validation import check_build_request, warmup_warning

CHECKPOINTS_DONE = "checkpoints/complete.json"
ARTIFACTS_DIR = "artifacts"
ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class PrepareSummary:
    num_examples: int
    skipped: list[SkippedExample]
    warnings: list[str] = field(default_factory=list)
    truncated: int = 0  # kept examples cut to max_seq_len (prompt tokens first)


@dataclass(frozen=True)
class ShardResult:
    shard: Shard
    files: dict[str, str]
    rows: int
    seconds: float


def prepare(
    store_dir: str | Path,
    dataset_path: str | Path,
    model_dir: str | Path | None,
    config: BuildConfig,
    warmup_from: Sequence[str | Path] = (),
) -> PrepareSummary:
    """Tokenise the pool and record what to build; fails early on unusable input.

    The dataset is read line by line and its tokens streamed to disk: RAM holds the IDs,
    not the pool. Without a model (methods that need none) the pool is kept as text only.
    """
    if model_dir is None:
        return _prepare_text(Path(store_dir), Path(dataset_path), config)
    root, model_dir = Path(store_dir), Path(model_dir)
    if not Path(dataset_path).is_file():
        raise InvalidInputError(f"the dataset {dataset_path} does not exist or is not a file")
    check_build_request(model_dir, config, [Path(d) for d in warmup_from])
    tokenizer = load_tokenizer(model_dir)
    encoder = ExampleEncoder(tokenizer, config.max_seq_len, config.template)
    spec = BuildSpec(
        dataset_path=str(Path(dataset_path).resolve()),
        dataset_sha256=sha256_file(dataset_path),
        model=ModelInfo(path=str(model_dir.resolve()), content_hash=model_content_hash(model_dir)),
        template=encoder.template,
        tokenizer_hash=tokenizer_hash(tokenizer, encoder.template),
        config=config,
        warmup_from=[str(Path(d).resolve()) for d in warmup_from],
    )
    check_resumable(root, spec)
    root.mkdir(parents=True, exist_ok=True)
    writer = TokenWriter(root)
    ids: list[str] = []
    skipped: list[SkippedExample] = []
    truncated = 0
    for example in iter_jsonl(dataset_path):
        encoded = encoder.encode(example)
        if isinstance(encoded, SkippedExample):
            skipped.append(encoded)
        else:
            writer.add(encoded)
            ids.append(encoded.id)
            truncated += encoded.truncated > 0
    writer.close()
    if not ids:
        raise InvalidInputError(
            f"the dataset {Path(dataset_path).name} has no examples"
            if not skipped
            else f"none of the dataset's {len(skipped)} examples has a completion token to "
            f"learn from (e.g. {skipped[0].id}: {skipped[0].reason})"
        )
    atomic_write_file(root / "examples.jsonl", lambda tmp: shutil.copyfile(dataset_path, tmp))
    atomic_write_json(root / "ids.json", ids)
    atomic_write_json(root / "skipped.json", [{"id": s.id, "reason": s.reason} for s in skipped])
    atomic_write_json(root / "build.json", spec.model_dump(mode="json"))
    warning = None if warmup_from else warmup_warning(len(ids), config)
    return PrepareSummary(len(ids), skipped, [warning] if warning else [], truncated)


def _prepare_text(root: Path, dataset_path: Path, config: BuildConfig) -> PrepareSummary:
    """A pool for methods that read only its text: every example kept, no tokens, no model."""
    unserved = methods_needing_a_model(store_methods(config))
    if unserved:
        raise InvalidInputError(
            f"a model is needed: {', '.join(unserved)} run the model; only methods that read "
            "the text alone (bm25, dsir, random) build without one"
        )
    ids = [example.id for example in iter_jsonl(dataset_path)]
    if not ids:
        raise InvalidInputError("the dataset has no examples")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_file(root / "examples.jsonl", lambda tmp: shutil.copyfile(dataset_path, tmp))
    atomic_write_json(root / "ids.json", ids)
    atomic_write_json(root / "skipped.json", [])
    spec = BuildSpec(
        dataset_path=str(dataset_path.resolve()),
        dataset_sha256=sha256_file(dataset_path),
        model=None,
        template=config.template,
        tokenizer_hash="",
        config=config,
    )
    atomic_write_json(root / "build.json", spec.model_dump(mode="json"))
    return PrepareSummary(len(ids), [])


def _leaves(value: object, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    if isinstance(value, dict):
        found: dict[tuple[str, ...], object] = {}
        for key, item in value.items():
            found.update(_leaves(item, (*prefix, key)))
        return found
    return {prefix: value}


def spec_differences(old: BuildSpec, new: BuildSpec) -> list[str]:
    """What a requested build changes of a directory's recorded one, as the user says it."""
    from gradstore.config import config_flag

    changes = []
    if old.dataset_sha256 != new.dataset_sha256:
        changes.append("the dataset's content (--dataset)")
    if (old.model and old.model.content_hash) != (new.model and new.model.content_hash):
        changes.append("the model's content (--model)")
    if old.warmup_from != new.warmup_from:
        changes.append("the warmup checkpoints (--warmup-from)")
    before = _leaves(old.config.model_dump(mode="json"))
    after = _leaves(new.config.model_dump(mode="json"))
    for path in sorted(set(before) | set(after)):
        if before.get(path) != after.get(path):
            changes.append(
                f"{'.'.join(path)} {before.get(path)!r} → {after.get(path)!r} ({config_flag(path)})"
            )
    return changes


def check_resumable(root: Path, spec: BuildSpec) -> None:
    """A build resumes in a directory only when it was started there with the same inputs
    and configuration; anything else would mix two builds' files under one manifest."""
    if not (root / BUILD_SPEC).exists():
        return  # new, or a prepare killed before it recorded anything: it starts again
    old = load_build_spec(root)
    changes = spec_differences(old, spec)
    if changes:
        raise ConflictError(
            f"{root} holds a datastore built with other settings: {'; '.join(changes)}. "
            "Use --force to replace it, or another --out to keep both"
        )


def run_warmup_stage(
    store_dir: str | Path, device: str | None = None, progress: bool = False
) -> list[WarmupCheckpoint]:
    """Train (or import) the warmup checkpoints once; a rerun after success is free."""
    root = Path(store_dir)
    if (root / CHECKPOINTS_DONE).exists():
        return load_checkpoints(root / "checkpoints")
    spec = load_build_spec(root)
    target = root / "checkpoints"
    shutil.rmtree(target, ignore_errors=True)  # a killed earlier attempt
    if spec.warmup_from:
        checkpoints = import_reference_checkpoints(
            [Path(d) for d in spec.warmup_from], Path(needed_model(spec).path), target
        )
    else:
        from gradstore.features.warmup import run_warmup

        checkpoints = run_warmup(
            Path(needed_model(spec).path),
            TokenStore(root),  # rows are read when the warmup sample asks for them
            spec.config,
            target,
            device=device,
            progress=progress,
        )
    atomic_write_json(root / CHECKPOINTS_DONE, [c.index for c in checkpoints])
    return checkpoints


def plan_shards(store_dir: str | Path) -> list[Shard]:
    """All featurize units: checkpoint × row range of ``shard_size``."""
    root = Path(store_dir)
    if not (root / CHECKPOINTS_DONE).exists():
        raise NotReadyError("shards can be planned only after the warmup stage")
    spec = load_build_spec(root)
    n = len(read_json(root / "ids.json"))
    size = spec.config.shard_size
    return [
        Shard(c.index, start, min(start + size, n))
        for c in load_checkpoints(root / "checkpoints")
        for start in range(0, n, size)
    ]


def shard_done(store_dir: str | Path, shard: Shard) -> bool:
    root, spec = Path(store_dir), load_build_spec(Path(store_dir))
    return all((root / shard.feature_file(k)).exists() for k in spec.config.pool_features)


def featurize_shard(
    store_dir: str | Path,
    shard: Shard,
    device: str | None = None,
    on_batch: ProgressCallback | None = None,
) -> ShardResult:
    """Compute and atomically write one shard's features of every pool feature kind.

    At the last checkpoint, when the build serves Influence Distillation, the same backward
    also yields the rows' a ⊙ g features: they are written as that shard's unit of the
    ``update_directions`` artifact, which the artifact stage then finds done (one backward
    per pool example per checkpoint, not a second pass over the pool).
    """
    started = time.perf_counter()
    root = Path(store_dir)
    spec = load_build_spec(root)
    config = spec.config
    examples = TokenStore(root).slice(shard.start, shard.end)
    model = store_model(root, device)
    update_unit = _update_directions_unit(root, spec, shard, max(model.checkpoints))
    kinds = [*config.pool_features, *(["update"] if update_unit else [])]
    files: dict[str, str] = {}
    with model.lock:
        featurizer = model.featurizer(
            shard.checkpoint,
            config.batch_size,
            adam="adam" in config.pool_features,
            batch_tokens=config.batch_tokens,
            update=update_unit is not None,
        )
        features = featurizer.featurize(examples, kinds=kinds, on_batch=on_batch)
    for kind in config.pool_features:
        relative = shard.feature_file(kind)
        files[relative] = atomic_save_npy(root / relative, stored_features(config, features[kind]))
    if update_unit is not None:
        from gradstore.artifacts import get_artifact

        (relative,) = get_artifact(update_unit.artifact).unit_files(update_unit)
        update = features["update"].astype(float_dtype(config.dtype))
        files[relative] = atomic_save_npy(root / relative, update)
    return ShardResult(shard, files, len(examples), time.perf_counter() - started)


def stored_features(config: BuildConfig, features: np.ndarray) -> np.ndarray:
    """A shard's (rows, dim) float32 features as stored: cast, or coded
    (``gradstore.store.codes``)."""
    if is_code(config.dtype):
        code = FeatureCode.of(config.dtype, config.projection.dim, config.scale_block)
        return code.encode(features)
    return features.astype(float_dtype(config.dtype))


def _update_directions_unit(root: Path, spec: BuildSpec, shard: Shard, last: int):
    """The ``update_directions`` unit this shard can fill in passing, if the build wants it
    and it is not written yet (its rows are the shard's: both are ``shard_size`` long)."""
    if shard.checkpoint != last:
        return None
    from gradstore.artifacts import ArtifactUnit, artifact_unit_done
    from gradstore.features.influence_features import UPDATE_DIRECTIONS
    from gradstore.selection import DEFAULT_METHODS, extra_artifacts

    methods = spec.config.methods if spec.config.methods is not None else DEFAULT_METHODS
    if UPDATE_DIRECTIONS not in extra_artifacts(methods):
        return None
    unit = ArtifactUnit(UPDATE_DIRECTIONS, shard.start, shard.end)
    return None if artifact_unit_done(root, unit) else unit


def build_index(store_dir: str | Path) -> Manifest:
    """Check that every shard is there, index the features and write the manifest last.

    Exact factories need no index beyond the shards; approximate ones are built by
    streaming the shards. Every file's sha256 is computed here, once, so that opening the
    store later costs a stat per file.
    """
    root = Path(store_dir)
    spec = load_build_spec(root)
    if needs_warmup(store_methods(spec.config)):
        manifest = _feature_manifest(root, spec)
    else:
        manifest = _text_manifest(root, spec)
    # leftovers of killed writers are not part of the store; artifact units may be running
    remove_stale_temporaries(root, skip=(ARTIFACTS_DIR,))
    manifest.files = {
        str(path.relative_to(root)): FileEntry(sha256=sha256_file(path), size=path.stat().st_size)
        for path in sorted(root.rglob("*"))
        if path.is_file() and _core_file(root, path)
    }
    with manifest_lock(root):
        _keep_finished_artifacts(root, manifest)
        write_manifest(root, manifest)
    return manifest


def _text_manifest(root: Path, spec: BuildSpec) -> Manifest:
    """The manifest of a store without gradient features: no checkpoints, shards, index."""
    config = spec.config
    return Manifest(
        schema_version=SCHEMA_VERSION,
        created_at=utc_now(),
        model=spec.model,
        template=spec.template,
        tokenizer_hash=spec.tokenizer_hash,
        config=config,
        dataset_sha256=spec.dataset_sha256,
        num_examples=len(read_json(root / "ids.json")),
        num_skipped=len(read_json(root / "skipped.json")),
        lora_parameters=0,
        dim=0,
        dtype=config.dtype,
        projection=config.projection.model_dump(),
        kinds=[],
        checkpoints=[],
        shards={},
        indexes=[],
        files={},
    )


def _feature_manifest(root: Path, spec: BuildSpec) -> Manifest:
    """The manifest of the gradient features: every shard there, indexed."""
    config = spec.config
    shards = plan_shards(root)
    missing = [s.name for s in shards if not shard_done(root, s)]
    if missing:
        raise NotReadyError(f"{len(missing)} featurize shards are not done, e.g. {missing[0]}")
    checkpoints = load_checkpoints(root / "checkpoints")
    weights = checkpoint_weights(checkpoints)
    shard_files = {
        f"ckpt-{c.index}/{kind}": [s.feature_file(kind) for s in shards if s.checkpoint == c.index]
        for c in checkpoints
        for kind in config.pool_features
    }
    probe = np.load(root / shards[0].feature_file(config.pool_features[0]), mmap_mode="r")
    dim = config.projection.dim if is_code(config.dtype) else int(probe.shape[1])
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        created_at=utc_now(),
        model=spec.model,
        template=spec.template,
        tokenizer_hash=spec.tokenizer_hash,
        config=config,
        dataset_sha256=spec.dataset_sha256,
        num_examples=len(read_json(root / "ids.json")),
        num_skipped=len(read_json(root / "skipped.json")),
        lora_parameters=_lora_parameter_count(checkpoints[0]),
        dim=dim,
        dtype=config.dtype,
        projection=config.projection.model_dump(),
        kinds=list(config.pool_features),
        checkpoints=[
            CheckpointEntry(index=c.index, learning_rate=c.learning_rate, weight=w)
            for c, w in zip(checkpoints, weights, strict=True)
        ],
        shards=shard_files,
        indexes=[],
        files={},
    )
    for kind in config.pool_features:
        if is_exact(config.index_factory):
            manifest.indexes.append(IndexEntry(kind=kind, factory=config.index_factory))
        else:
            manifest.indexes.append(_build_approximate_index(root, manifest, kind))
        manifest.artifacts[gradient_artifact(kind)] = ArtifactEntry(
            kind="gradient_features",
            params={"feature_kind": kind, "projection": config.projection.model_dump()},
            files=[f for c in checkpoints for f in shard_files[f"ckpt-{c.index}/{kind}"]],
            created_at=manifest.created_at,
        )
    return manifest


def _core_file(root: Path, path: Path) -> bool:
    """Files the index stage lists: not artifacts (``finish_artifact`` lists those), not
    temporaries, locks or the manifest itself."""
    relative = path.relative_to(root)
    return (
        relative.parts[0] != ARTIFACTS_DIR
        and not path.name.startswith(".")
        and path.name != "manifest.json"
    )


def _keep_finished_artifacts(root: Path, manifest: Manifest) -> None:
    """An index stage run again (a lost lease) must not drop artifacts finished meanwhile."""
    try:
        previous = read_manifest(root)
    except (NotReadyError, ManifestMismatchError):
        return
    for name, entry in previous.artifacts.items():
        if name in manifest.artifacts or not all((root / f).exists() for f in entry.files):
            continue
        manifest.artifacts[name] = entry
        manifest.files.update({f: previous.files[f] for f in entry.files if f in previous.files})


def _build_approximate_index(root: Path, manifest: Manifest, kind: str) -> IndexEntry:
    """A FAISS index of a non-exact factory, trained on a sample, filled shard by shard."""
    store = Datastore(root, manifest)
    factory = manifest.config.index_factory
    sample = store.rows(kind, train_sample_rows(manifest.num_examples, manifest.total_dim))
    blocks = (
        np.concatenate([a.astype(np.float32) for a in block.arrays], axis=1)
        for block in store.feature_blocks(kind)
    )
    index = build_faiss_index_streaming(blocks, manifest.total_dim, factory, sample)
    return write_index(root, kind, index, factory)


def _lora_parameter_count(checkpoint: WarmupCheckpoint) -> int:
    from safetensors import safe_open

    with safe_open(str(Path(checkpoint.path) / "adapter_model.safetensors"), "pt") as handle:
        return sum(int(np.prod(handle.get_slice(k).get_shape())) for k in handle.keys())  # noqa: SIM118


def build_all(
    store_dir: str | Path,
    dataset_path: str | Path,
    model_dir: str | Path | None,
    config: BuildConfig,
    warmup_from: Sequence[str | Path] = (),
    device: str | None = None,
    progress: bool = True,
    methods: Sequence[str] | None = None,
    force: bool = False,
) -> tuple[PrepareSummary, Manifest]:
    """Every stage in a row, on this process: the CLI's ``gradstore build``.

    ``methods`` are the selection methods the store must serve (default: the config's
    ``methods``, else every method whose artifacts cost less than the gradient features);
    their extra artifacts are computed after the index stage. An existing ``store_dir``
    resumes only a build of the same inputs and configuration (``force`` replaces it); a
    build that fails in a directory it started leaves the directory as it found it, while
    an interrupted one (Ctrl-C) stays, for the same command to resume.
    Warmup and featurize run only when a method reads gradient features; ``model_dir``
    None builds a text-only store.
    """
    root = Path(store_dir)
    _check_out_dir(root, force)
    if force:
        _empty_directory(root)
    existed = root.exists()
    fresh = not existed or (root.is_dir() and not any(root.iterdir()))
    try:
        return _build_stages(
            root, dataset_path, model_dir, config, warmup_from, device, progress, methods
        )
    except Exception:
        if not existed:
            shutil.rmtree(root, ignore_errors=True)
        elif fresh and root.is_dir():
            _empty_directory(root)
        raise


def _started_build(root: Path) -> bool:
    """A datastore, or a build prepare began (its token files are written first)."""
    return (root / BUILD_SPEC).exists() or (root / "tokens").is_dir()


def _check_out_dir(root: Path, force: bool) -> None:
    """``--out`` is new, empty or a started build; ``--force`` never deletes anything else."""
    if not root.exists():
        return
    if not root.is_dir():
        raise InvalidInputError(f"--out {root} is a file, not a directory")
    if any(root.iterdir()) and not _started_build(root):
        what = "--force replaces only a datastore; " if force else ""
        raise InvalidInputError(
            f"--out {root} is not empty and holds no datastore; {what}choose a new or empty "
            "directory"
        )


def _empty_directory(root: Path) -> None:
    if not root.is_dir():
        return
    for child in list(root.iterdir()):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _build_stages(
    store_dir: Path,
    dataset_path: str | Path,
    model_dir: str | Path | None,
    config: BuildConfig,
    warmup_from: Sequence[str | Path],
    device: str | None,
    progress: bool,
    methods: Sequence[str] | None,
) -> tuple[PrepareSummary, Manifest]:
    from tqdm import tqdm

    from gradstore.artifacts import add_artifacts
    from gradstore.selection import DEFAULT_METHODS, extra_artifacts

    if methods is not None:  # recorded in build.json: the featurize shards read it too
        config = config.model_copy(update={"methods": list(methods)})
    methods = config.methods
    extra = extra_artifacts(DEFAULT_METHODS if methods is None else methods)
    summary = prepare(store_dir, dataset_path, model_dir, config, warmup_from)
    for warning in summary.warnings if progress else ():
        tqdm.write(f"warning: {warning}", file=sys.stderr)
    if needs_warmup(store_methods(config)):
        run_warmup_stage(store_dir, device=device, progress=progress)
        shards = [s for s in plan_shards(store_dir) if not shard_done(store_dir, s)]
        total = sum(s.end - s.start for s in shards)
        with tqdm(total=total, desc="featurize", unit="ex", disable=not progress) as bar:
            for shard in shards:
                featurize_shard(store_dir, shard, device=device, on_batch=bar.update)
    manifest = build_index(store_dir)
    if extra:
        manifest = add_artifacts(store_dir, extra, device=device, progress=progress)
    return summary, manifest
