"""The chain-of-thought exemplars of lm-eval's BBH, MMLU and GSM8K tasks, as prompt/completion.

Each exemplar is split the way the LESS reference splits its few-shot strings, at the
``\\nA:`` answer marker: the prompt is ``Q: <question>\\nA:`` and the completion everything the
exemplar writes after ``A:`` (``Let's think step by step. ...`` where the exemplar has it).
The tokenizer puts the one space between them back.

The task files are YAML with lm-eval's own tags (``!function utils.x``); the loader below is
PyYAML's safe loader reading any such tag as null, since only plain fields are used here.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

import yaml

from gradstore.assets.datasets_common import WheelReader, field, text_field
from gradstore.assets.wheels import CorruptAssetError
from gradstore.examples import Example

BBH_DIR = "lm_eval/tasks/bbh/cot_fewshot/"
MMLU_PROMPTS = "lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json"
GSM8K_COT = "lm_eval/tasks/gsm8k/gsm8k-cot.yaml"
ANSWER_MARKER = "\nA:"


class _TaskLoader(yaml.SafeLoader):
    """Safe YAML that reads lm-eval's custom tags as null instead of refusing the file."""


_TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def load_task_yaml(reader: WheelReader, member: str) -> dict[str, Any]:
    try:
        document = yaml.load(reader.text(member), Loader=_TaskLoader)
    except yaml.YAMLError as error:
        raise CorruptAssetError(f"{member} is not valid YAML: {error}") from error
    if not isinstance(document, dict):
        raise CorruptAssetError(f"{member}: not a task (a YAML mapping)")
    return document


def fewshot_samples(task: dict[str, Any], member: str) -> list[Any]:
    samples = field(field(task, "fewshot_config", member), "samples", member)
    if not isinstance(samples, list) or not samples:
        raise CorruptAssetError(f"{member}: fewshot_config.samples is not a list of exemplars")
    return samples


def split_template(template: str, variable: str, member: str) -> tuple[str, str]:
    """``doc_to_text`` cut at its answer marker: the question part and what the exemplar
    writes after ``A:`` before the target (``" Let's think step by step.\\n"`` or nothing)."""
    question, marker, lead = template.partition(ANSWER_MARKER)
    if not marker or "{{" + variable + "}}" not in question or "{{" in lead:
        raise CorruptAssetError(f"{member}: unexpected doc_to_text {template!r}")
    return question, lead


def exemplar(template: tuple[str, str], variable: str, value: str, target: str) -> tuple[str, str]:
    question, lead = template
    prompt = question.replace("{{" + variable + "}}", value) + ANSWER_MARKER
    return prompt, (lead + target).lstrip()


def bbh_cot(reader: WheelReader) -> list[Example]:
    """27 tasks × 3 exemplars; subtask = the task (the YAML's ``dataset_name``)."""
    examples = []
    for member in reader.members(BBH_DIR, ".yaml"):
        if PurePosixPath(member).name.startswith("_"):  # the group and template files
            continue
        task = load_task_yaml(reader, member)
        name = text_field(task, "dataset_name", member)
        template = split_template(text_field(task, "doc_to_text", member), "input", member)
        description = str(task.get("description") or "").strip()
        for index, sample in enumerate(fewshot_samples(task, member)):
            prompt, completion = exemplar(
                template,
                "input",
                text_field(sample, "input", member),
                text_field(sample, "target", member),
            )
            examples.append(
                Example(
                    id=f"{name}/{index}",
                    prompt=prompt,
                    completion=completion,
                    subtask=name,
                    extra={"meta": {"task": task.get("task"), "description": description}},
                )
            )
    return examples


def gsm8k_cot(reader: WheelReader) -> list[Example]:
    """The 8 exemplars of Wei et al.'s GSM8K chain-of-thought prompt; subtask ``gsm8k``."""
    task = load_task_yaml(reader, GSM8K_COT)
    template = split_template(text_field(task, "doc_to_text", GSM8K_COT), "question", GSM8K_COT)
    examples = []
    for index, sample in enumerate(fewshot_samples(task, GSM8K_COT)):
        prompt, completion = exemplar(
            template,
            "question",
            text_field(sample, "question", GSM8K_COT),
            text_field(sample, "target", GSM8K_COT),
        )
        examples.append(
            Example(
                id=f"gsm8k/{index}",
                prompt=prompt,
                completion=completion,
                subtask="gsm8k",
                extra={"meta": {"task": task.get("task")}},
            )
        )
    return examples


_NEXT_QUESTION = re.compile(r"\n\n(?=Q: )")


def mmlu_cot(reader: WheelReader) -> list[Example]:
    """Flan's MMLU CoT prompts, one few-shot string per subject: ``description\\n\\nQ: ...
    \\nA: ...\\n\\nQ: ...``, cut at each ``\\n\\nQ:`` and then at ``\\nA:``; subtask = subject."""
    prompts = reader.json(MMLU_PROMPTS)
    if not isinstance(prompts, dict):
        raise CorruptAssetError(f"{MMLU_PROMPTS}: not a mapping of subject to prompt")
    examples = []
    for subject, text in prompts.items():
        if not isinstance(text, str):
            raise CorruptAssetError(f"{MMLU_PROMPTS}: {subject!r} is not a string")
        description, *blocks = _NEXT_QUESTION.split(text.strip("\n"))
        if description.startswith("Q: ") or not blocks:
            raise CorruptAssetError(f"{MMLU_PROMPTS}: {subject!r} has no description or no Q:")
        for index, block in enumerate(blocks):
            if block.count(ANSWER_MARKER) != 1:
                raise CorruptAssetError(
                    f"{MMLU_PROMPTS}: exemplar {index} of {subject!r} has no single answer"
                )
            question, _, answer = block.partition(ANSWER_MARKER)
            examples.append(
                Example(
                    id=f"{subject}/{index}",
                    prompt=question + ANSWER_MARKER,
                    completion=answer.strip(),
                    subtask=subject,
                    extra={"meta": {"subject": subject, "description": description.strip()}},
                )
            )
    return examples
