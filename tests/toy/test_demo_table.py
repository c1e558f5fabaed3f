"""The demo's precision table: every method's label readable, columns aligned."""

from __future__ import annotations

from gradstore.demo.toy import format_table


def test_long_labels_get_their_own_width_and_columns_align():
    labels = ["less", "influence_distillation", "infdist (landmark 128)"]
    families = ["add", "parity"]
    report = {
        "families": families,
        "fraction": 0.05,
        "num_examples": 1200,
        "selected_per_query": 60,
        "chance": 0.125,
        "precision": {f: {x: 0.25 for x in labels} for f in families},
        "mean_precision": {x: 0.5 for x in labels},
        "query_ms_mean": {x: 12.3 for x in labels},
        "assets_s": 1.0,
        "build_s": 2.0,
    }
    table, legend = format_table(report).split("\n\n")
    header, *rows = table.splitlines()[1:]
    assert "Precision: the share" in legend and "rds = RDS+" in legend
    assert header.split() == ["family", "less", "influence_distillation", "infdist", "(landmark",
                              "128)"]  # fmt: skip
    assert len({len(line) for line in [header, *rows]}) == 1  # right-aligned to one width
    for label in labels:  # each value ends where its label ends
        end = header.index(label) + len(label)
        assert all(line[end - 1] != " " and line[end : end + 1] in ("", " ") for line in rows)
