"""The HTML report: its content, escaping, and a real headless Chromium rendering it."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from gradstore.query import QueryEngine
from gradstore.report.html import build_report, jaccard_matrix, result_from_dict, write_report
from gradstore.selection import run_selection
from gradstore.store.datastore import Datastore
from gradstore.toy.corpus import generate_targets

TARGETS = [t for t in generate_targets(seed=3, per_family=2) if t.subtask in ("add", "reverse")]

pytest.importorskip("matplotlib", reason="the report draws its figures with matplotlib")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def results(contract_store):
    engine = QueryEngine(Datastore.open(contract_store))
    return [
        run_selection(engine, TARGETS, method, top_k=8, options=options, explain=True)
        for method, options in (("less", {}), ("rds", {}), ("bm25", {"aggregate": "round_robin"}))
    ]


def test_jaccard_against_hand_counts():
    np.testing.assert_allclose(
        jaccard_matrix([["a", "b", "c"], ["b", "c", "d"], []]),
        [[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]],
    )


def test_report_holds_every_section_and_escapes_text(contract_store, results, tmp_path):
    path = write_report(
        tmp_path / "report.html", results, contract_store,
        context={"datastore": "<ds-1>", "targets": len(TARGETS)},
    )  # fmt: skip
    page = path.read_text()
    for section in ("summary", "score", "share", "coverage", "overlap", "top"):
        assert f'<section id="{section}">' in page
    assert "&lt;ds-1&gt;" in page and "<ds-1>" not in page
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 4
    assert all(s.id in page for s in results[0].selected)
    assert page.count("<pre>") == 8  # every top example's text, from examples.jsonl
    for target in TARGETS:
        assert target.id in page
    assert "Jaccard" in page


def test_a_stored_response_round_trips(results):
    from dataclasses import asdict

    again = result_from_dict(asdict(results[0]))
    assert again == results[0]
    page = build_report([again])
    assert "One selection" in page and "explain" not in page.split("coverage")[1][:200]


def test_without_explanation_the_coverage_section_says_how_to_get_it(results):
    plain = result_from_dict({"method": "less", "selected": [{"id": "x<1>", "score": 0.5,
                                                              "subtask": "s"}]})  # fmt: skip
    page = build_report([plain])
    assert "explain: true" in page and "x&lt;1&gt;" in page


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary (Debian: apt-get install -y --no-install-recommends chromium)",
)
def test_chromium_renders_the_report(contract_store, results, tmp_path):
    path = write_report(tmp_path / "report.html", results, contract_store)
    screenshot = tmp_path / "report.png"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    done = subprocess.run(
        [*flags, f"--screenshot={screenshot}", "--window-size=1200,2600", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    from PIL import Image

    image = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float64)
    assert image.shape == (2600, 1200)
    assert image.std() > 20  # text and figures, not a blank page
    dom = subprocess.run(
        [*flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0 and "Top 8 examples" in dom.stdout
    assert dom.stdout.count("<img") == 4
