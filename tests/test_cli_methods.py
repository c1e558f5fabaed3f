"""The CLI: several values after one flag, and a store gaining methods on one process."""

from __future__ import annotations

import shutil

from typer.testing import CliRunner

from gradstore.cli import app, spread_multi_value_flags
from gradstore.store.datastore import Datastore


def test_several_values_after_one_flag_are_spread_and_the_repeated_form_kept():
    assert spread_multi_value_flags(["build", "--warmup-from", "a", "b", "c", "--out", "s"]) == [
        "build", "--warmup-from", "a", "--warmup-from", "b", "--warmup-from", "c", "--out", "s",
    ]  # fmt: skip
    repeated = ["build", "--warmup-from", "a", "--warmup-from", "b"]
    assert spread_multi_value_flags(repeated) == repeated
    assert spread_multi_value_flags(["x", "--methods", "rds", "dsir"]) == [
        "x", "--methods", "rds", "--methods", "dsir",
    ]  # fmt: skip
    assert spread_multi_value_flags(["select", "--store", "s", "--top-k", "5"]) == [
        "select", "--store", "s", "--top-k", "5",
    ]  # fmt: skip


def test_a_store_gains_methods_from_the_cli(less_only_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(less_only_store, store)
    before = Datastore.open(store).manifest
    args = spread_multi_value_flags(["add-methods", str(store), "--methods", "rds", "dsir"])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    after = Datastore.open(store, verify=True).manifest
    assert {"hidden_states", "ngram_counts"} <= set(after.artifacts)
    assert all(after.files[p].sha256 == e.sha256 for p, e in before.files.items())


def test_the_report_command_writes_a_page_comparing_methods(less_only_store, tmp_path):
    targets = tmp_path / "targets.jsonl"
    targets.write_text(
        '{"id": "t1", "subtask": "add", "prompt": "3+4=", "completion": "7"}\n'
        '{"id": "t2", "subtask": "rev", "prompt": "rev abcd", "completion": "dcba"}\n'
    )
    out = tmp_path / "report.html"
    args = ["report", "--store", str(less_only_store), "--targets", str(targets)]
    args += ["--out", str(out), "--top-k", "4", "--methods", "less", "bm25"]
    result = CliRunner().invoke(app, spread_multi_value_flags(args))
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert page.startswith("<!doctype html>") or "<html" in page[:200]
    assert "bm25" in page and "<img" in page
