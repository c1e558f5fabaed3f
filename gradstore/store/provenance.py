"""Does a store's recorded configuration match what its checkpoints say they were trained with?

Checksums prove that the files are the files the manifest lists; they cannot prove that the
manifest's ``config`` describes how those files were made. A store rebuilt over an old one
with other warmup flags once kept its old checkpoints under a manifest recording the new
settings, and passed every checksum. Each checkpoint records the mean learning rate of its
epoch and the optimizer steps taken so far, and the warmup writes the IDs it trained on:
all three are functions of the warmup configuration and the pool size, so they are
recomputed here and compared. Imported checkpoints (``--warmup-from``) carry the reference
run's own schedule and are not compared.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from gradstore.config import BuildConfig
from gradstore.errors import ManifestMismatchError

TOLERANCE = 1e-9  # relative; the rates are recomputed with the same float operations


def linear_schedule_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """transformers' ``get_linear_schedule_with_warmup`` multiplier at ``step`` (0-based)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def expected_checkpoints(num_examples: int, config: BuildConfig) -> list[tuple[int, float, int]]:
    """(epoch, mean learning rate, optimizer steps so far) the warmup records per epoch."""
    from gradstore.features.warmup import warmup_plan

    warmup = config.warmup
    sample = max(1, min(num_examples, round(warmup.fraction * num_examples)))
    _, per_epoch = warmup_plan(sample, warmup.batch_size, warmup.gradient_accumulation)
    total = per_epoch * warmup.epochs
    zero_rate = math.ceil(warmup.warmup_ratio * total)
    expected = []
    for epoch in range(1, warmup.epochs + 1):
        steps = range((epoch - 1) * per_epoch, epoch * per_epoch)
        rates = [warmup.learning_rate * linear_schedule_factor(s, zero_rate, total) for s in steps]
        expected.append((epoch, sum(rates) / len(rates), epoch * per_epoch))
    return expected


def check_provenance(root: Path, spec_path: Path, config: BuildConfig, num_examples: int) -> None:
    """Raise ``ManifestMismatchError`` when the checkpoints (or the build record at
    ``spec_path``) contradict ``config``."""
    if spec_path.exists():
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
        if spec.get("warmup_from"):
            return  # the reference run's checkpoints follow its own schedule
        if BuildConfig.model_validate(spec["config"]) != config:
            raise ManifestMismatchError(
                f"the manifest's configuration differs from {spec_path.name}'s: the store was "
                "rebuilt over another; build it again with --force"
            )
    if not (root / "checkpoints").exists():
        return  # built without the warmup (its methods need none): no schedule to check
    infos = sorted(root.glob("checkpoints/ckpt-*/checkpoint.json"))
    found = {}
    for path in infos:
        data = json.loads(path.read_text(encoding="utf-8"))
        found[int(data["index"])] = data
    expected = expected_checkpoints(num_examples, config)
    warmup = config.warmup
    if sorted(found) != [epoch for epoch, _, _ in expected]:
        raise ManifestMismatchError(
            f"the manifest records warmup.epochs={warmup.epochs} but the store holds "
            f"checkpoints {sorted(found)}: the checkpoints were trained with another "
            "configuration; build the store again with --force"
        )
    for epoch, rate, step in expected:
        data = found[epoch]
        recorded_rate = float(data["learning_rate"])
        if not math.isclose(recorded_rate, rate, rel_tol=TOLERANCE, abs_tol=1e-30):
            raise ManifestMismatchError(
                f"checkpoint {epoch} records a mean learning rate of {recorded_rate:.6g}, but "
                f"the manifest's warmup settings (learning_rate={warmup.learning_rate:g}, "
                f"fraction={warmup.fraction:g}, batch_size={warmup.batch_size}, "
                f"gradient_accumulation={warmup.gradient_accumulation}) give {rate:.6g}: the "
                "checkpoints were trained with another configuration; build the store again "
                "with --force"
            )
        if data.get("step") is not None and int(data["step"]) != step:
            raise ManifestMismatchError(
                f"checkpoint {epoch} records {data['step']} optimizer steps, but the manifest's "
                f"warmup settings give {step}: the checkpoints were trained with another "
                "configuration; build the store again with --force"
            )
    _check_warmup_sample(root, num_examples, config)


def _check_warmup_sample(root: Path, num_examples: int, config: BuildConfig) -> None:
    sample_path = root / "checkpoints" / "warmup_sample.json"
    ids_path = root / "ids.json"
    if not (sample_path.exists() and ids_path.exists()):
        return
    from gradstore.features.warmup import warmup_sample

    ids = json.loads(ids_path.read_text(encoding="utf-8"))
    rows = warmup_sample(num_examples, config.warmup.fraction, config.warmup.seed)
    if json.loads(sample_path.read_text(encoding="utf-8")) != [ids[r] for r in rows]:
        raise ManifestMismatchError(
            "the warmup trained on other examples than the manifest's warmup.fraction and "
            "warmup.seed choose: the checkpoints were trained with another configuration; "
            "build the store again with --force"
        )
