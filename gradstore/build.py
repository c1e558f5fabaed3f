"""A datastore build as stages: prepare → warmup → featurize shards → index.

The CLI runs the stages in a row (``build_all``); workers run the same functions, one
leased unit at a time. Every stage is idempotent and writes its outputs atomically, so a
killed stage is simply run again, and two workers produce the same bytes as one.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gradstore.checkpoints import (
    WarmupCheckpoint,
    checkpoint_weights,
    import_reference_checkpoints,
    load_checkpoints,
)
from gradstore.codes import FeatureCode, float_dtype, is_code
from gradstore.config import BuildConfig
from gradstore.errors import InvalidInputError, ManifestMismatchError, NotReadyError
from gradstore.examples import iter_jsonl
from gradstore.files import (
    atomic_save_npy,
    atomic_write_file,
    atomic_write_json,
    read_json,
    remove_stale_temporaries,
    sha256_file,
)
from gradstore.index import (
    build_faiss_index_streaming,
    is_exact,
    train_sample_rows,
    write_index,
)
from gradstore.model_pool import store_model
from gradstore.modeling import load_tokenizer, model_content_hash
from gradstore.store import (
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
    read_manifest,
    utc_now,
    write_manifest,
)
from gradstore.tokenization import ExampleEncoder, SkippedExample
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


def tokenizer_hash(tokenizer, template: str) -> str:
    """Identifies what the tokenizer does to text: vocabulary, specials, template."""
    digest = hashlib.sha256()
    digest.update(template.encode())
    digest.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(repr(tokenizer.all_special_tokens).encode())
    digest.update(str(getattr(tokenizer, "chat_template", "") or "").encode())
    return digest.hexdigest()


def prepare(
    store_dir: str | Path,
    dataset_path: str | Path,
    model_dir: str | Path,
    config: BuildConfig,
    warmup_from: Sequence[str | Path] = (),
) -> PrepareSummary:
    """Tokenise the pool and record what to build; fails early on unusable input.

    The dataset is read line by line and its tokens streamed to disk: RAM holds the IDs,
    not the pool.
    """
    root, model_dir = Path(store_dir), Path(model_dir)
    if not model_dir.is_dir():
        raise InvalidInputError(f"model path {model_dir} is not a local directory")
    check_build_request(model_dir, config, [Path(d) for d in warmup_from])
    tokenizer = load_tokenizer(model_dir)
    encoder = ExampleEncoder(tokenizer, config.max_seq_len, config.template)
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
        raise InvalidInputError("no example of the dataset has a completion token to learn from")
    atomic_write_file(root / "examples.jsonl", lambda tmp: shutil.copyfile(dataset_path, tmp))
    atomic_write_json(root / "ids.json", ids)
    atomic_write_json(root / "skipped.json", [{"id": s.id, "reason": s.reason} for s in skipped])
    spec = BuildSpec(
        dataset_path=str(Path(dataset_path).resolve()),
        dataset_sha256=sha256_file(dataset_path),
        model=ModelInfo(path=str(model_dir.resolve()), content_hash=model_content_hash(model_dir)),
        template=encoder.template,
        tokenizer_hash=tokenizer_hash(tokenizer, encoder.template),
        config=config,
        warmup_from=[str(Path(d).resolve()) for d in warmup_from],
    )
    atomic_write_json(root / "build.json", spec.model_dump(mode="json"))
    warning = None if warmup_from else warmup_warning(len(ids), config)
    return PrepareSummary(len(ids), skipped, [warning] if warning else [], truncated)


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
            [Path(d) for d in spec.warmup_from], Path(spec.model.path), target
        )
    else:
        from gradstore.warmup import run_warmup

        checkpoints = run_warmup(
            Path(spec.model.path),
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
    """A shard's (rows, dim) float32 features as stored: cast, or coded (``gradstore.codes``)."""
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
    from gradstore.influence_features import UPDATE_DIRECTIONS
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
    model_dir: str | Path,
    config: BuildConfig,
    warmup_from: Sequence[str | Path] = (),
    device: str | None = None,
    progress: bool = True,
    methods: Sequence[str] | None = None,
) -> tuple[PrepareSummary, Manifest]:
    """Every stage in a row, on this process: the CLI's ``gradstore build``.

    ``methods`` are the selection methods the store must serve (default: the config's
    ``methods``, else every method whose artifacts cost less than the gradient features);
    their extra artifacts are computed after the index stage.
    """
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
