"""Per-target coverage against a direct count, and its place in an in2core answer."""

from __future__ import annotations

import numpy as np

from gradstore.selection.coverage import coverage_report, strong_threshold


def test_counts_and_top_proponents_match_a_direct_computation():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 3))
    scores[:4, 1] += 10  # target 1 has four strong proponents, target 0 none planted
    ids = [f"e{i}" for i in range(50)]
    report = coverage_report(scores, ids, ["t0", "t1", "t2"], ["a", "a", "b"], z=3.0, top=2)
    values = scores.ravel()
    mad = np.median(np.abs(values - np.median(values)))
    assert report["threshold"] == strong_threshold(scores, 3.0)
    assert np.isclose(report["threshold"], np.median(values) + 3 * 1.4826 * mad)
    for j, target in enumerate(report["targets"]):
        assert target["strong_proponents"] == int((scores[:, j] > report["threshold"]).sum())
        best = sorted(range(50), key=lambda i: (-scores[i, j], i))[:2]
        assert [t["id"] for t in target["top"]] == [ids[i] for i in best]
    assert report["targets"][1]["strong_proponents"] >= 4
    assert report["targets"][1]["subtask"] == "a" and report["targets"][2]["target"] == "t2"
