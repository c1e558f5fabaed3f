"""Schemathesis hooks: some generated requests name the deployment's real dataset, store and
model, so that fuzzing reaches past "no such id" into uploads, submission checks and real
selections. Loaded by ``st run`` through SCHEMATHESIS_HOOKS; the IDs come in
GRADSTORE_FUZZ_IDS. Choices are drawn by Hypothesis, so a seed replays the same run.
"""

from __future__ import annotations

import json
import os

import schemathesis
from hypothesis import strategies as st

REAL = json.loads(os.environ["GRADSTORE_FUZZ_IDS"])
_PATH_KEYS = {
    "dataset_id": "dataset_id",
    "datastore_id": "datastore_id",
    "example_id": "example_id",
}


def _method(context) -> str:
    operation = getattr(context, "operation", None)
    return (getattr(operation, "method", "") or "").upper()


@schemathesis.hook
def flatmap_path_parameters(context, path_parameters):
    if not isinstance(path_parameters, dict) or _method(context) == "DELETE":
        return st.just(path_parameters)  # the prepared store must outlive the run
    real = dict(path_parameters)
    for key, name in _PATH_KEYS.items():
        if isinstance(real.get(key), str):
            real[key] = REAL[name]
    return st.sampled_from([path_parameters, real])


def _plain_string(value, limit: int) -> bool:
    return isinstance(value, str) and len(value) <= limit


@schemathesis.hook
def flatmap_body(context, body):
    """Build requests sometimes name the real dataset and model (valid strings replaced by
    valid strings only, so a case generated to be invalid stays invalid)."""
    if not isinstance(body, dict):
        return st.just(body)
    real = dict(body)
    if _plain_string(real.get("dataset_id"), 64):
        real["dataset_id"] = REAL["dataset_id"]
    model = real.get("model")
    if isinstance(model, dict) and _plain_string(model.get("path"), 4096):
        real["model"] = dict(model, path=REAL["model_path"])
    return st.sampled_from([body, real])


@schemathesis.hook
def filter_path_parameters(context, path_parameters):
    """The prepared store is never deleted (the run learns IDs from responses, too)."""
    if _method(context) != "DELETE" or not isinstance(path_parameters, dict):
        return True
    return path_parameters.get("datastore_id") != REAL["datastore_id"]
