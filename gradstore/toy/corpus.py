"""A toy instruction corpus where skill and wording disagree (docs/toy.md).

Eight skill families, each asked in the same five surface styles, so words shared between
two examples say nothing about their skill. The skill is given by a symbol in the input
(``+``, ``~``, ``^``, ...), which lexical retrievers ignore, and most families answer in a
distinct *form* (numbers, lowercase or uppercase letters, yes/no, codes, even/odd); two
(``add`` and ``count``) share the numeric form on purpose, to show where gradient features
stop separating skills. The family is kept as ``meta`` for evaluation only.

The ``hard`` variant is built like real pools: targets are written in the wording a user
would choose for the skill ("Write the letters of this word in reverse order: ~abc"), and
half of every family's pool examples are written in the target wordings of *all* families,
so most pool examples that share a target's very wording teach another skill. Lexical
matching then finds the wording, not the skill.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from gradstore.examples import Example

FAMILIES = ("add", "count", "reverse", "sort", "upper", "brackets", "lookup", "parity")
# Surface styles, shared by every family; none names a skill.
STYLES = {
    "qa": "Q: {x}\nA:",
    "io": "Input: {x}\nOutput:",
    "please": "Please respond to this: {x}",
    "arrow": "{x} =>",
    "item": "Here is a task item: {x}. Answer briefly.",
}
# The wording a user would write a target of each skill in (the hard variant).
TARGET_WORDINGS = {
    "add": "Add the two numbers and give the sum: {x}",
    "count": "Count how many times the marked letter occurs: {x}",
    "reverse": "Write the letters of this word in reverse order: {x}",
    "sort": "Sort the letters of this word alphabetically: {x}",
    "upper": "Rewrite this word in capital letters: {x}",
    "brackets": "Tell me whether these brackets are balanced: {x}",
    "lookup": "Look up this word in the dictionary and give its code: {x}",
    "parity": "Say whether this number is even or odd: {x}",
}
VARIANTS = ("standard", "hard")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _word(rng: random.Random, low: int = 3, high: int = 6) -> str:
    return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(low, high)))


def synthetic_dictionary(seed: int = 0) -> dict[str, str]:
    """A fixed synthetic dictionary: made-up words → made-up codes (the ``lookup`` skill)."""
    rng = random.Random(f"dictionary-{seed}")
    words = sorted({_word(rng, 4, 5) for _ in range(60)})
    return {w: f"{rng.choice('KQZXJV')}-{rng.randint(10, 99)}" for w in words}


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += 1 if char == "(" else -1
        if depth < 0:
            return False
    return depth == 0


def _brackets(rng: random.Random) -> tuple[str, str]:
    """Half built balanced, half random (mostly unbalanced), so both answers are common."""
    if rng.random() < 0.5:
        depth, text = 0, []
        for _ in range(rng.randint(2, 5)):
            text.append("(")
            depth += 1
            while depth and rng.random() < 0.5:
                text.append(")")
                depth -= 1
        text.extend(")" * depth)
        return "".join(text), "yes"
    random_text = "".join(rng.choice("()") for _ in range(rng.randint(3, 9)))
    return random_text, "yes" if _balanced(random_text) else "no"


def _task(family: str, rng: random.Random, dictionary: dict[str, str]) -> tuple[str, str]:
    """(input, answer) of one example of a family."""
    if family == "add":
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        return f"{a}+{b}", str(a + b)
    if family == "count":
        letter = rng.choice("xyz")
        text = "".join(rng.choice(letter + "abc") for _ in range(rng.randint(4, 9)))
        return f"#{letter} {text}", str(text.count(letter))
    if family == "reverse":
        word = _word(rng)
        return f"~{word}", word[::-1]
    if family == "sort":
        word = _word(rng)
        return f"{word}^", " ".join(sorted(word))
    if family == "upper":
        word = _word(rng)
        return f"!{word}", word.upper()
    if family == "brackets":
        return _brackets(rng)
    if family == "lookup":
        word = rng.choice(sorted(dictionary))
        return f"@{word}", dictionary[word]
    if family == "parity":
        n = rng.randint(0, 999)
        return f"%{n}", "even" if n % 2 == 0 else "odd"
    raise ValueError(f"unknown family {family!r}")


def _template(variant: str, family: str, n: int, targets: bool) -> tuple[str, str]:
    """(style name, template) of the n-th example of a family."""
    styles = list(STYLES.items())
    if variant == "standard":
        return styles[n % len(styles)]
    if variant != "hard":
        raise ValueError(f"unknown corpus variant {variant!r}; known: {', '.join(VARIANTS)}")
    if targets:
        return f"wording:{family}", TARGET_WORDINGS[family]
    if n % 2 == 0:
        return styles[(n // 2) % len(styles)]
    worded = FAMILIES[(n // 2) % len(FAMILIES)]  # every family's wording, in turn
    return f"wording:{worded}", TARGET_WORDINGS[worded]


def _examples(
    seed: int,
    per_family: int,
    make_id: Callable[[str, int], str],
    subtask: bool,
    exclude: set[tuple[str | None, str | None]],
    variant: str = "standard",
) -> list[Example]:
    rng = random.Random(seed)
    dictionary = synthetic_dictionary(0)  # the dictionary is part of the world, not the sample
    out = []
    for family in FAMILIES:
        for n in range(per_family):
            style, template = _template(variant, family, n, targets=subtask)
            for _ in range(1000):  # redraw inputs the caller holds out; small spaces run dry
                task_input, answer = _task(family, rng, dictionary)
                prompt = template.format(x=task_input)
                if (prompt, answer) not in exclude:
                    break
            else:
                raise ValueError(f"cannot draw a new {family!r} example outside 'exclude'")
            out.append(
                Example(
                    id=make_id(family, n),
                    prompt=prompt,
                    completion=answer,
                    subtask=family if subtask else None,
                    extra={"meta": {"family": family, "style": style}},
                )
            )
    random.Random(seed + 1).shuffle(out)
    return out


def generate_corpus(
    seed: int = 0, per_family: int = 150, variant: str = "standard"
) -> list[Example]:
    """The pool: ``per_family`` examples of every family, shuffled, deterministic from seed."""
    return _examples(seed, per_family, lambda f, n: f"{f}-{n:05d}", False, set(), variant)


def generate_targets(
    seed: int = 1,
    per_family: int = 8,
    exclude: Iterable[Example] = (),
    variant: str = "standard",
) -> list[Example]:
    """Held-out target examples with ``subtask`` = family; IDs never clash with the pool's.

    Pass the pool as ``exclude`` to keep targets out of it word for word (a target that is
    also a pool example would make selection look better than it is).
    """
    held = {(e.prompt, e.completion) for e in exclude}
    return _examples(
        10_000 + seed, per_family, lambda f, n: f"target-{f}-{n:05d}", True, held, variant
    )


def family_of(example: Example) -> str:
    """The evaluation label of a toy example (never an input to selection)."""
    return example.extra["meta"]["family"]
