"""A selection report a person can read: one self-contained HTML page per selection.

Sections: the request at a glance; the score distribution of the selected examples; each
subtask's share of the budget; coverage per target point (when the selection was explained);
overlap between methods run on the same targets (when several results are given); and the
top examples with their text. Figures are drawn server-side (``report_plots``) and embedded,
so the page needs no other file and no script. Every text from the pool or the request is
HTML-escaped.

``write_report(path, results, store_dir)`` is what ``gradstore report`` and the report route
call; ``build_report`` returns the page as a string.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradstore.examples import Example, iter_jsonl
from gradstore.report import plots as report_plots
from gradstore.selection.base import Selected, SelectionResult

TOP_EXAMPLES = 20
TEXT_CHARS = 600

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { white-space: pre-wrap; margin: 0; font-size: 0.85em; }
img { max-width: 100%; } .note { color: #666; }
"""


def result_from_dict(raw: Mapping[str, Any]) -> SelectionResult:
    """A ``SelectionResult`` from its JSON form (a stored select response)."""
    return SelectionResult(
        method=raw["method"],
        selected=[Selected(s["id"], float(s["score"]), s["subtask"]) for s in raw["selected"]],
        num_candidates=int(raw.get("num_candidates", 0)),
        timings_ms=dict(raw.get("timings_ms", {})),
        details=dict(raw.get("details", {})),
        explanation=raw.get("explanation"),
    )


def pool_examples(store_dir: str | Path, ids: set[str]) -> dict[str, Example]:
    """The pool examples with these IDs, read from the store's ``examples.jsonl``."""
    found: dict[str, Example] = {}
    for example in iter_jsonl(Path(store_dir) / "examples.jsonl"):
        if example.id in ids:
            found[example.id] = example
            if len(found) == len(ids):
                break
    return found


def jaccard_matrix(selections: Sequence[Sequence[str]]) -> np.ndarray:
    sets = [set(s) for s in selections]
    out = np.ones((len(sets), len(sets)))
    for i, a in enumerate(sets):
        for j, b in enumerate(sets):
            union = len(a | b)
            out[i, j] = len(a & b) / union if union else 1.0
    return out


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: set[int]) -> str:
    """Cells are HTML already (escaped by the caller) except numeric ones; no header if empty."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    head = f"<thead><tr>{head}</tr></thead>" if header else ""
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_e(c)}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _figure(uri: str, alt: str) -> str:
    return f'<p><img src="{uri}" alt="{_e(alt)}"></p>'


def _example_text(example: Example | None) -> str:
    if example is None:
        return '<span class="note">(text not available)</span>'
    text = example.text()
    if len(text) > TEXT_CHARS:
        text = text[:TEXT_CHARS] + " …"
    return f"<pre>{_e(text)}</pre>"


def _summary(result: SelectionResult, label: str, context: Mapping[str, Any]) -> str:
    rows = [(_e(k), _e(v)) for k, v in context.items()]
    rows += [
        ("method", _e(label)),
        ("selected", _e(len(result.selected))),
        ("candidates", _e(result.num_candidates)),
        ("total time (ms)", _e(result.timings_ms.get("total", "—"))),
    ]
    return _table([], rows, set())


def _subtask_share(result: SelectionResult) -> str:
    counts = Counter(s.subtask for s in result.selected)
    total = max(1, len(result.selected))
    asked = [t["subtask"] for t in (result.explanation or {}).get("targets", [])]
    names = list(dict.fromkeys([*asked, *counts]))  # subtasks that got nothing too
    figure = report_plots.bar_chart(names, [counts[n] for n in names], "subtask", "examples")
    rows = [(_e(n), counts[n], f"{counts[n] / total:.1%}") for n in names]
    return _figure(figure, "selected examples per subtask") + _table(
        ["subtask", "selected", "share of the budget"], rows, {1, 2}
    )


def _coverage(result: SelectionResult) -> str:
    if not result.explanation:
        return (
            '<p class="note">Run the selection with <code>explain: true</code> to see which '
            "target point pulled each example in and how each target is covered.</p>"
        )
    targets = result.explanation["targets"]
    figure = report_plots.bar_chart(
        [t["id"] for t in targets], [t["pulled"] for t in targets], "target point", "pulled in"
    )
    rows = [
        (
            _e(t["id"]),
            _e(t["subtask"]),
            t["pulled"],
            ", ".join(f"{_e(s['id'])} ({s['score']:.3g})" for s in t["strongest"]),
        )
        for t in targets
    ]
    uncovered = sum(1 for t in targets if t["pulled"] == 0)
    note = f'<p class="note">{uncovered} of {len(targets)} target points pulled in nothing.</p>'
    return (
        _figure(figure, "selected examples pulled in by each target point")
        + note
        + _table(["target", "subtask", "pulled in", "strongest selected (score)"], rows, {2})
    )


def _overlap(results: Sequence[SelectionResult], labels: Sequence[str]) -> str:
    if len(results) < 2:
        return '<p class="note">One selection: give several to compare methods.</p>'
    jaccard = jaccard_matrix([[s.id for s in r.selected] for r in results])
    rows = [
        (_e(labels[i]), _e(labels[j]), f"{jaccard[i, j]:.3f}")
        for i in range(len(results))
        for j in range(i + 1, len(results))
    ]
    return _figure(report_plots.overlap_heatmap(labels, jaccard), "overlap between methods") + (
        _table(["method", "method", "Jaccard overlap"], rows, {2})
    )


def _top_examples(result: SelectionResult, examples: Mapping[str, Example], top: int) -> str:
    why = {e["id"]: e for e in (result.explanation or {}).get("examples", [])}
    rows = []
    for rank, selected in enumerate(result.selected[:top], start=1):
        reason = why.get(selected.id)
        pulled = (
            f"{_e(reason['target'])} ({reason['share']:.0%})"
            if reason and reason.get("target") is not None
            else "—"
        )
        rows.append(
            (
                rank,
                _e(selected.id),
                f"{selected.score:.4g}",
                _e(selected.subtask),
                pulled,
                _example_text(examples.get(selected.id)),
            )
        )
    return _table(["rank", "id", "score", "subtask", "target (share)", "text"], rows, {0, 2})


def build_report(
    results: Sequence[SelectionResult],
    examples: Mapping[str, Example] | None = None,
    labels: Sequence[str] | None = None,
    title: str = "Selection report",
    context: Mapping[str, Any] | None = None,
    top: int = TOP_EXAMPLES,
) -> str:
    """The HTML page for ``results[0]`` (compared with the others, same targets assumed).

    ``examples``: pool examples by ID, for the text of the top examples; ``labels``: one
    name per result (default: its method); ``context``: rows for the summary (datastore,
    selection ID, targets, options...).
    """
    if not results:
        raise ValueError("a report needs at least one selection result")
    labels = list(labels or [r.method for r in results])
    if len(labels) != len(results):
        raise ValueError("one label per result")
    primary = results[0]
    histogram = report_plots.score_histogram(
        {label: [s.score for s in r.selected] for label, r in zip(labels, results, strict=True)}
    )
    sections = [
        ("Summary", _summary(primary, labels[0], context or {})),
        ("Score distribution", _figure(histogram, "scores of the selected examples")),
        ("Share of the budget per subtask", _subtask_share(primary)),
        ("Coverage per target point", _coverage(primary)),
        ("Overlap between methods", _overlap(results, labels)),
        (f"Top {min(top, len(primary.selected))} examples", _top_examples(
            primary, examples or {}, top
        )),
    ]  # fmt: skip
    body = "".join(
        f'<section id="{_e(name.split()[0].lower())}"><h2>{_e(name)}</h2>{content}</section>'
        for name, content in sections
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>{body}</body></html>"
    )


def write_report(
    path: str | Path,
    results: Sequence[SelectionResult],
    store_dir: str | Path | None = None,
    labels: Sequence[str] | None = None,
    title: str = "Selection report",
    context: Mapping[str, Any] | None = None,
    top: int = TOP_EXAMPLES,
) -> Path:
    """Write the report to ``path``; the top examples' text comes from ``store_dir``."""
    examples: dict[str, Example] = {}
    if store_dir is not None and results:
        examples = pool_examples(store_dir, {s.id for s in results[0].selected[:top]})
    page = build_report(results, examples, labels, title, context, top)
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
