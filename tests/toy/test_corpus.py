"""The toy corpus: deterministic, balanced, styles shared across skills, valid JSONL."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from gradstore.examples import Example, read_jsonl, write_jsonl
from gradstore.toy.corpus import (
    FAMILIES,
    STYLES,
    family_of,
    generate_corpus,
    generate_targets,
    synthetic_dictionary,
)


def test_same_seed_same_corpus_other_seed_other_corpus():
    first, again = generate_corpus(seed=3, per_family=10), generate_corpus(seed=3, per_family=10)
    assert [e.to_record() for e in first] == [e.to_record() for e in again]
    other = generate_corpus(seed=4, per_family=10)
    assert {(e.prompt, e.completion) for e in first} != {(e.prompt, e.completion) for e in other}


def test_every_family_present_with_its_count_and_unique_ids():
    examples = generate_corpus(seed=0, per_family=20)
    assert len(FAMILIES) == 8
    assert Counter(family_of(e) for e in examples) == dict.fromkeys(FAMILIES, 20)
    assert len({e.id for e in examples}) == len(examples)
    for e in examples:
        assert re.fullmatch(rf"{family_of(e)}-\d{{5}}", e.id)
        assert e.subtask is None  # the pool carries no labels selection could read


def test_styles_are_shared_by_all_families_and_balanced():
    examples = generate_corpus(seed=0, per_family=20)
    by_family: dict[str, Counter] = {f: Counter() for f in FAMILIES}
    for e in examples:
        by_family[family_of(e)][e.extra["meta"]["style"]] += 1
    for family, styles in by_family.items():
        assert styles == dict.fromkeys(STYLES, 4), family


def test_style_wording_does_not_name_any_skill():
    skill_words = {
        "add", "sum", "plus", "count", "reverse", "sort", "upper", "uppercase", "bracket",
        "brackets", "balanced", "lookup", "look", "code", "parity", "even", "odd",
    }  # fmt: skip
    for template in STYLES.values():
        words = set(re.findall(r"[a-z]+", template.lower()))
        assert not words & skill_words, template


def test_answers_are_correct_for_each_skill():
    dictionary = synthetic_dictionary(0)
    for e in generate_corpus(seed=1, per_family=30):
        family, answer = family_of(e), e.completion
        x = _task_input(e.prompt, e.extra["meta"]["style"])
        if family == "add":
            a, b = x.split("+")
            assert answer == str(int(a) + int(b))
        elif family == "count":
            letter, text = x[1], x.split(" ")[1]
            assert answer == str(text.count(letter))
        elif family == "reverse":
            assert answer == x[1:][::-1]
        elif family == "sort":
            assert answer == " ".join(sorted(x[:-1]))
        elif family == "upper":
            assert answer == x[1:].upper()
        elif family == "brackets":
            assert answer == ("yes" if _balanced_slow(x) else "no")
        elif family == "lookup":
            assert answer == dictionary[x[1:]]
        elif family == "parity":
            assert answer == ("even" if int(x[1:]) % 2 == 0 else "odd")


def test_answer_forms_mostly_differ_between_families():
    """Distinct answer forms are what gradient features can separate (docs/toy.md)."""
    forms: dict[str, set[str]] = {f: set() for f in FAMILIES}
    for e in generate_corpus(seed=0, per_family=40):
        forms[family_of(e)].add(_form(e.completion))
    assert forms["add"] == forms["count"] == {"digits"}  # the pair that shares a form
    assert forms["reverse"] == {"lower"} and forms["sort"] == {"spaced-lower"}
    assert forms["upper"] == {"upper"} and forms["lookup"] == {"code"}
    assert forms["brackets"] == {"yes/no"} and forms["parity"] == {"even/odd"}


def test_texts_are_short():
    lengths = [len(e.prompt) + len(e.completion) for e in generate_corpus(0, 50)]
    assert sum(lengths) / len(lengths) < 40 and max(lengths) <= 60


def test_jsonl_round_trip(tmp_path):
    examples = generate_corpus(seed=0, per_family=5) + generate_targets(seed=1, per_family=2)
    write_jsonl(examples, tmp_path / "c.jsonl")
    assert read_jsonl(tmp_path / "c.jsonl") == examples


def test_targets_are_held_out_and_labelled():
    pool = generate_corpus(seed=0, per_family=150)
    targets = generate_targets(seed=1, per_family=20, exclude=pool)
    assert Counter(t.subtask for t in targets) == dict.fromkeys(FAMILIES, 20)
    assert all(t.subtask == family_of(t) for t in targets)
    assert not {t.id for t in targets} & {e.id for e in pool}
    assert not {(t.prompt, t.completion) for t in targets} & {
        (e.prompt, e.completion) for e in pool
    }
    unfiltered = generate_targets(seed=1, per_family=20)
    assert [t.id for t in unfiltered] == [t.id for t in targets]


def test_targets_refuse_an_exhausted_input_space():
    """With every lookup question held out, no new lookup target can be drawn."""
    every_lookup = [
        Example(id=f"{word}-{style}", prompt=template.format(x=f"@{word}"), completion=code)
        for word, code in synthetic_dictionary(0).items()
        for style, template in STYLES.items()
    ]
    with pytest.raises(ValueError, match="lookup"):
        generate_targets(seed=1, per_family=1, exclude=every_lookup)
    assert len(generate_targets(seed=1, per_family=1, exclude=every_lookup[1:])) == 8


def _task_input(prompt: str, style: str) -> str:
    before, after = STYLES[style].split("{x}")
    assert prompt.startswith(before) and prompt.endswith(after)
    return prompt[len(before) : len(prompt) - len(after)]


def _balanced_slow(text: str) -> bool:
    while "()" in text:
        text = text.replace("()", "")
    return text == ""


def _form(answer: str) -> str:
    if answer.isdigit():
        return "digits"
    if answer in ("yes", "no"):
        return "yes/no"
    if answer in ("even", "odd"):
        return "even/odd"
    if re.fullmatch(r"[A-Z]-\d\d", answer):
        return "code"
    if re.fullmatch(r"[a-z]( [a-z])*", answer) and " " in answer:
        return "spaced-lower"
    if answer.isalpha():
        return "lower" if answer.islower() else "upper"
    return "other"


def test_the_hard_variant_writes_many_pool_examples_in_each_targets_wording():
    """Targets use their skill's wording; a pool example in that wording teaches its skill
    only one time in eight (every family is written in every wording, in turn)."""
    from gradstore.toy.corpus import TARGET_WORDINGS

    pool = generate_corpus(seed=0, per_family=48, variant="hard")
    assert Counter(family_of(e) for e in pool) == dict.fromkeys(FAMILIES, 48)
    targets = generate_targets(seed=1, per_family=4, exclude=pool, variant="hard")
    for target in targets:
        assert target.extra["meta"]["style"] == f"wording:{target.subtask}"
        prefix = TARGET_WORDINGS[target.subtask].split("{x}")[0]
        assert target.prompt.startswith(prefix)
    for family in FAMILIES:
        worded = [e for e in pool if e.extra["meta"]["style"] == f"wording:{family}"]
        assert len(worded) == 24  # half of the pool is worded, evenly over 8 wordings
        assert Counter(family_of(e) for e in worded) == dict.fromkeys(FAMILIES, 3)
    generic = [e for e in pool if not e.extra["meta"]["style"].startswith("wording:")]
    assert len(generic) == len(pool) // 2
    standard = generate_corpus(seed=0, per_family=48)  # same draws: same inputs and answers
    assert sorted(e.completion for e in standard) == sorted(e.completion for e in pool)
    with pytest.raises(ValueError, match="unknown corpus variant"):
        generate_corpus(seed=0, per_family=2, variant="harder")
