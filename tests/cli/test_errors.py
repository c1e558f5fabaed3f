"""Every expected mistake on the command line: a line or two saying what, where and what to
do, a non-zero exit status, no traceback (unless --debug or GRADSTORE_DEBUG=1 asks)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from cli_run import gradstore

SEE_SELECT = "(see: gradstore select --help)"


def lines(text: str) -> list[str]:
    return text.strip().splitlines()


def test_select_flags_are_checked_before_anything_heavy_is_imported(user_files):
    """--fraction 1.5 is refused by the command line itself: torch is never imported."""
    probe = (
        "import sys; sys.argv = ['gradstore', 'select', '--store', 'store', '--targets', "
        "'targets.jsonl', '--fraction', '1.5']\n"
        "from gradstore.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    code = exit.code\n"
        "print(code, 'torch' in sys.modules, 'gradstore.selection' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=user_files, capture_output=True, text=True
    )
    assert done.stdout.split() == ["2", "False", "False"], done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--fraction", "1.5"],
            "error: Invalid value for '--fraction' / '-f': 1.5 is not a share of the pool: "
            "give 0 < x <= 1",
        ),
        (
            ["--method", "lesss", "--top-k", "3"],
            "error: Invalid value for '--method' / '-m': unknown method 'lesss'; choose one "
            "of: less, random, bm25, rds, dsir, in2core, influence_distillation, delift",
        ),
        (
            ["--options", "{aggregate: mean}", "--top-k", "3"],
            "error: Invalid value for '--options' / '-o': not JSON (Expecting property name "
            "enclosed in double quotes at character 2); write it like "
            '\'{"aggregate": "mean"}\' (keys and strings in double quotes)',
        ),
        (
            ["--options", "[1]", "--top-k", "3"],
            "error: Invalid value for '--options' / '-o': must be a JSON object, like "
            '\'{"aggregate": "mean"}\'',
        ),
        (
            ["--top-k", "0"],
            "error: Invalid value for '--top-k' / '-k': Input should be greater than or equal to 1",
        ),
    ],
)
def test_bad_select_flags(built_store, args, message):
    done = gradstore(
        "select", "--store", "store", "--targets", "targets.jsonl", *args, cwd=built_store.parent
    )
    assert (done.returncode, lines(done.stderr)) == (2, [message, SEE_SELECT])


def test_missing_paths_say_they_do_not_exist(user_files, tmp_path):
    done = gradstore("select", "-s", "nothere", "-t", "targets.jsonl", "-k", "1", cwd=user_files)
    assert (done.returncode, lines(done.stderr)) == (
        2,
        ["error: Invalid value for '--store' / '-s': nothere does not exist", SEE_SELECT],
    )
    (tmp_path / "half").mkdir()
    done = gradstore("select", "-s", "half", "-t", "t.jsonl", "-k", "1", cwd=tmp_path)
    assert lines(done.stderr)[0] == (
        "error: Invalid value for '--store' / '-s': half holds no finished datastore (no "
        "manifest.json): run the gradstore build that made it again, with the same flags, to "
        "finish it"
    )
    done = gradstore("select", "-s", "store", "-t", "nothere.jsonl", "-k", "1", cwd=user_files)
    assert lines(done.stderr)[0] == (
        "error: Invalid value for '--targets' / '-t': nothere.jsonl does not exist"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b'{"prompt": "a", "completion": "b"}\n\n{"prompt": "a" "completion": "b"}\n',
            "error: bad.jsonl:3: not valid JSON: Expecting ',' delimiter (column 16)",
        ),
        (
            b'{"id": "x", "prompt": "a", "completion": "b"}\n'
            b'{"id": "x", "prompt": "c", "completion": "d"}\n',
            "error: bad.jsonl:2: duplicate id 'x', also on line 1; give every example its own 'id'",
        ),
        (
            b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n',
            "error: bad.jsonl:2: not UTF-8 text (byte 0xe9 at column 16); save the file as UTF-8",
        ),
        (
            b'{"prompt": "a"}\n',
            "error: bad.jsonl:1: example: Value error, needs 'messages', or both 'prompt' and "
            "'completion'",
        ),
    ],
)
def test_bad_target_files_name_file_and_line_from_1(built_store, content, message):
    (built_store.parent / "bad.jsonl").write_bytes(content)
    done = gradstore("select", "-s", "store", "-t", "bad.jsonl", "-k", "1", cwd=built_store.parent)
    assert (done.returncode, lines(done.stderr)) == (1, [message])


def test_a_byte_order_mark_is_accepted_and_a_missing_subtask_is_warned_of(built_store):
    root = built_store.parent
    records = [json.loads(line) for line in (root / "targets.jsonl").read_text().splitlines()]
    del records[1]["subtask"]
    text = "\ufeff" + "".join(json.dumps(r) + "\n" for r in records)
    (root / "bom.jsonl").write_text(text, encoding="utf-8")
    done = gradstore("select", "-s", "store", "-t", "bom.jsonl", "-k", "2", cwd=root)
    assert done.returncode == 0, done.stderr
    assert len(lines(done.stdout)) == 2
    assert lines(done.stderr) == [
        f"warning: 1 of the {len(records)} targets in bom.jsonl have no 'subtask' (e.g. "
        f"{records[1]['id']}); they are ranked together as subtask 'default'"
    ]


def test_build_input_errors(user_files, tmp_path):
    for name in ("pool.jsonl",):
        (tmp_path / name).write_bytes((user_files / name).read_bytes())
    (tmp_path / "empty.jsonl").write_text("\n")
    model = str(user_files / "model")
    done = gradstore(
        "build", "--dataset", "empty.jsonl", "--model", model, "--out", "s", cwd=tmp_path
    )
    assert (done.returncode, lines(done.stderr)) == (
        1,
        ["error: the dataset empty.jsonl has no examples"],
    )
    done = gradstore(
        "build", "--dataset", "pool.jsonl", "--model", "nomodel", "--out", "s", cwd=tmp_path
    )
    assert (done.returncode, lines(done.stderr)) == (
        1,
        [
            "error: the model directory nomodel does not exist; give a local Hugging Face "
            "model directory (gradstore models get makes one)"
        ],
    )
    (tmp_path / "config-only").mkdir()
    config = (user_files / "model" / "config.json").read_text()
    (tmp_path / "config-only" / "config.json").write_text(config)
    done = gradstore(
        "build", "--dataset", "pool.jsonl", "--model", "config-only", "--out", "s", cwd=tmp_path
    )
    assert (done.returncode, lines(done.stderr)) == (
        1,
        [
            "error: the model directory config-only has no weights (*.safetensors or "
            "pytorch_model*.bin); give a local Hugging Face model directory (gradstore models "
            "get makes one)"
        ],
    )
    done = gradstore(
        "build", "--dataset", "nothere.jsonl", "--model", model, "--out", "s", cwd=tmp_path
    )
    assert (done.returncode, lines(done.stderr)) == (
        2,
        [
            "error: Invalid value for '--dataset': nothere.jsonl does not exist",
            "(see: gradstore build --help)",
        ],
    )
    assert not (tmp_path / "s").exists()


def test_debug_shows_the_traceback(user_files, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    args = ["build", "--dataset", "empty.jsonl", "--model", str(user_files / "model"), "--out", "s"]
    for done in (
        gradstore(*args, "--debug", cwd=tmp_path),
        gradstore(*args, cwd=tmp_path, env={"GRADSTORE_DEBUG": "1"}),
    ):
        assert done.returncode == 1
        assert "Traceback" in done.stderr
        assert "the dataset empty.jsonl has no examples" in done.stderr


def test_remote_select_without_a_server_names_the_url(user_files):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    done = gradstore(
        "remote",
        "select",
        "-s",
        "abc",
        "-t",
        "targets.jsonl",
        "-k",
        "3",
        "--server",
        url,
        cwd=user_files,
    )
    assert (done.returncode, lines(done.stderr)) == (
        1,
        [
            f"error: cannot reach the gradstore service at {url} ([Errno 111] Connection "
            "refused); start one with gradstore serve, or point --server (GRADSTORE_SERVER) "
            "at a running one"
        ],
    )


def test_an_unknown_command(tmp_path):
    done = gradstore("selct", cwd=tmp_path)
    assert (done.returncode, lines(done.stderr)) == (
        2,
        ["error: No such command 'selct'. Did you mean 'select'?", "(see: gradstore --help)"],
    )


def test_a_bad_config_file_names_its_line(user_files, tmp_path):
    (tmp_path / "c.json").write_text('{\n "lora": {r: 4}}')
    args = ["build", "--dataset", str(user_files / "pool.jsonl"), "--model",
            str(user_files / "model"), "--out", "s", "--config"]  # fmt: skip
    done = gradstore(*args, "c.json", cwd=tmp_path)
    assert (done.returncode, lines(done.stderr)) == (
        2,
        [
            "error: Invalid value for --config: c.json, line 2: not valid JSON: Expecting "
            "property name enclosed in double quotes (column 11)",
            "(see: gradstore build --help)",
        ],
    )
    done = gradstore(*args, "nofile.json", cwd=tmp_path)
    assert lines(done.stderr)[0] == (
        "error: Invalid value for --config: nofile.json: No such file or directory"
    )
    assert not (tmp_path / "s").exists()


def test_a_normal_select_prints_no_warning_or_foreign_progress_bar(built_store):
    done = gradstore("select", "-s", "store", "-t", "targets.jsonl", "-k", "2",
                     cwd=built_store.parent)  # fmt: skip
    assert done.returncode == 0 and len(lines(done.stdout)) == 2
    assert done.stderr == "", done.stderr
