"""Build requests refused at submission for what would fail later, with plain warnings."""

from __future__ import annotations

import shutil

import pytest

from gradstore.config import BuildConfig, LoraConfig, WarmupConfig
from gradstore.errors import InvalidInputError
from gradstore.validation import check_build_request, warmup_warning


def test_a_sound_request_passes_with_its_plan(tiny_model_dir):
    config = BuildConfig(warmup=WarmupConfig(fraction=0.5, batch_size=4, gradient_accumulation=1))
    plan = check_build_request(tiny_model_dir, config, num_examples=200)
    assert plan.warmup_examples == 100 and plan.optimizer_steps == 25 * 4
    assert plan.warnings == []


def test_less_defaults_on_a_small_pool_warn_with_the_numbers():
    """The LESS defaults on 1,200 examples: 60 warmup examples, one step per epoch."""
    warning = warmup_warning(1200, BuildConfig())
    assert warning is not None
    assert "60 examples" in warning and "only 4 optimizer steps" in warning
    assert "1 per epoch × 4 epochs" in warning and "1 of them at a learning rate of 0" in warning
    assert "gradient_accumulation" in warning
    assert warmup_warning(200_000, BuildConfig()) is None  # 10k examples: 79 steps per epoch


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (BuildConfig(index_factory="IVF-nonsense"), "FAISS cannot build index"),
        (BuildConfig(lora=LoraConfig(target_modules=["q_proj", "c_attn"])), r"\['c_attn'\]"),
        (BuildConfig(template="chat_template"), "has no chat template"),
    ],
)
def test_what_would_fail_after_the_warmup_is_refused_now(tiny_model_dir, config, message):
    with pytest.raises(InvalidInputError, match=message):
        check_build_request(tiny_model_dir, config)


def test_warmup_directories_must_hold_adapters_and_adam_state(tiny_model_dir, tmp_path):
    checkpoint = tmp_path / "checkpoint-10"
    checkpoint.mkdir()
    with pytest.raises(InvalidInputError, match=r"no adapter_config\.json"):
        check_build_request(tiny_model_dir, BuildConfig(), [checkpoint])
    (checkpoint / "adapter_config.json").write_text("{}")
    with pytest.raises(InvalidInputError, match="no adapter weights"):
        check_build_request(tiny_model_dir, BuildConfig(), [checkpoint])
    (checkpoint / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(InvalidInputError, match=r"optimizer\.bin or optimizer\.pt"):
        check_build_request(tiny_model_dir, BuildConfig(), [checkpoint])
    (checkpoint / "optimizer.bin").write_bytes(b"")
    check_build_request(tiny_model_dir, BuildConfig(), [checkpoint])
    with pytest.raises(InvalidInputError, match="not a directory"):
        check_build_request(tiny_model_dir, BuildConfig(), [tmp_path / "absent"])


def test_a_directory_without_a_model_config_is_refused(tiny_model_dir, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").unlink()
    with pytest.raises(InvalidInputError, match=r"config\.json"):
        check_build_request(broken, BuildConfig())
