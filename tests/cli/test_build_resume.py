"""``gradstore build`` into a directory that holds a store, and ``verify`` of a store whose
manifest says it was built another way than it was."""

from __future__ import annotations

import hashlib
import json
import shutil

from cli_run import FLAGS, gradstore


def build(cwd, out, *extra):
    return gradstore(
        "build",
        "--dataset",
        "pool.jsonl",
        "--model",
        "model",
        "--out",
        out,
        *FLAGS,
        *extra,
        cwd=cwd,
    )


def learning_rates(store):
    manifest = json.loads((store / "manifest.json").read_text())
    return [c["learning_rate"] for c in manifest["checkpoints"]]


def test_a_rebuild_with_other_flags_is_refused_and_the_same_one_resumes(built_store):
    root = built_store.parent
    before = (built_store / "manifest.json").read_bytes()
    done = build(root, "store", "--warmup-learning-rate", "0.001", "--lora-r", "8")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: store holds a datastore built with other settings: lora.alpha 16.0 → 32.0 "
        "(--lora-alpha); lora.r 4 → 8 (--lora-r); warmup.learning_rate 0.005 → 0.001 "
        "(--warmup-learning-rate). Use --force to replace it, or another --out to keep both"
    ]
    assert (built_store / "manifest.json").read_bytes() == before
    done = build(root, "store")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("datastore ready at store\n")
    assert gradstore("verify", "store", cwd=root).returncode == 0


def test_force_replaces_the_store(built_store, tmp_path):
    shutil.copytree(built_store.parent, tmp_path / "user", symlinks=True)
    root = tmp_path / "user"
    done = build(root, "store", "--warmup-learning-rate", "0.001", "--force")
    assert done.returncode == 0, done.stderr
    for noise in ("Warning", "Loading weights", "Traceback"):  # our own bars only
        assert noise not in done.stderr, done.stderr
    assert learning_rates(root / "store") != learning_rates(built_store)
    verified = gradstore("verify", "store", cwd=root)
    assert verified.returncode == 0, verified.stderr


def test_a_manifest_that_lies_fails_verify(built_store, tmp_path):
    """The old silent reuse, made by hand: new warmup settings recorded over old checkpoints,
    every checksum listed anew. The checkpoints' own records give it away."""
    store = shutil.copytree(built_store, tmp_path / "store")
    manifest = json.loads((store / "manifest.json").read_text())
    spec = json.loads((store / "build.json").read_text())
    for record in (manifest, spec):
        record["config"]["warmup"]["learning_rate"] = 2e-05
    (store / "build.json").write_text(json.dumps(spec))
    data = (store / "build.json").read_bytes()
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest["files"]["build.json"] = entry
    (store / "manifest.json").write_text(json.dumps(manifest))
    done = gradstore("verify", "store", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("error: checkpoint 1 records a mean learning rate of ")
    assert "learning_rate=2e-05" in done.stderr
    assert done.stderr.rstrip().endswith("build the store again with --force")


def test_a_failed_build_leaves_nothing_behind(user_files, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    model = str(user_files / "model")
    done = gradstore(
        "build", "--dataset", "bad.jsonl", "--model", model, "--out", "s", cwd=tmp_path
    )
    assert done.stderr.strip() == "error: bad.jsonl:2: not valid JSON: Expecting value (column 12)"
    assert not (tmp_path / "s").exists()
    (tmp_path / "empty-dir").mkdir()
    gradstore(
        "build", "--dataset", "bad.jsonl", "--model", model, "--out", "empty-dir", cwd=tmp_path
    )
    assert list((tmp_path / "empty-dir").iterdir()) == []


def test_a_directory_that_is_no_store_is_never_replaced(user_files, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for force in ([], ["--force"]):
        done = gradstore(
            "build",
            "--dataset",
            str(user_files / "pool.jsonl"),
            "--model",
            str(user_files / "model"),
            "--out",
            "mine",
            *force,
            cwd=tmp_path,
        )
        assert done.returncode == 1
        assert done.stderr.startswith("error: --out mine is not empty and holds no datastore")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_prepare_killed_before_it_recorded_anything_starts_again(user_files, tmp_path):
    (tmp_path / "s" / "tokens").mkdir(parents=True)  # what a killed prepare leaves
    (tmp_path / "s" / "tokens" / "input_ids.bin").write_bytes(b"\0" * 8)
    done = gradstore("build", "--dataset", str(user_files / "pool.jsonl"), "--model",
                     str(user_files / "model"), "--out", "s", *FLAGS, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert gradstore("verify", "s", cwd=tmp_path).returncode == 0
