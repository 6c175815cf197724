"""The paper-tables report: rows per table, mean ± population std over seeds (hand-computed),
the paper's figures beside them, a chart per table, and runs left out when missing."""
import json
import os

from unipt_plugin.synthetic.paper_tables import PAPER_TABLES, ZERO_SHOT_RUN, write_paper_tables

METRICS = ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP")


def _m(r1):
    return {k: r1 + i for i, k in enumerate(METRICS)}


def test_tables_hold_hand_computed_means_and_spreads(tmp_path):
    results = {"unipt": {0: _m(40.0), 1: _m(50.0)}, "scratch": {0: _m(4.0), 1: _m(6.0)},
               "unipt_no_mlm": {0: _m(30.0), 1: _m(30.0)}, ZERO_SHOT_RUN: {0: _m(10.0), 1: _m(12.0)}}
    md = write_paper_tables(str(tmp_path), results, machine="a test machine")
    # unipt: mean 45, population std 5 (|40-45| = |50-45| = 5); Rank-5 = Rank-1 + 1
    assert "| UniPT pre-training on the pool's pseudo-texts | 45.00 ± 5.00 | 46.00 ± 5.00 |" in md
    assert "| from scratch (image and text encoders random) | 5.00 ± 1.00 |" in md
    assert "66.83 | 84.16 |" in md and "65.77 | 83.53 |" in md  # the paper's Table 2 / 5 figures
    assert "30.00 ± 0.00" in md
    assert "(seed 0 only)" not in md
    assert "| UniPT pre-training, pooled features | 11.00 ± 1.00 |" in md
    assert "a test machine" in md
    # runs not trained are left out; a table with no run at all has no chart
    assert "MiniLM" not in md and "3x the fine-tuning schedule" not in md
    assert os.path.exists(tmp_path / "table2.png") and os.path.exists(tmp_path / "table5.png")
    assert os.path.exists(tmp_path / "table6.png")  # its "demo PGU settings" row is unipt
    assert (tmp_path / "paper_tables.md").read_text(encoding="utf-8") == md
    # the per-seed figures behind the cells, as given (JSON keys are strings)
    raw = json.loads((tmp_path / "paper_tables.json").read_text(encoding="utf-8"))
    assert raw["machine"] == "a test machine"
    assert raw["results"]["unipt"] == {"0": _m(40.0), "1": _m(50.0)}
    assert set(raw["results"]) == set(results)


def test_rows_with_fewer_seeds_say_which(tmp_path):
    results = {"unipt": {0: _m(40.0), 1: _m(50.0), 2: _m(45.0)}, "minilm": {0: _m(4.0)},
               "scratch": {0: _m(4.0), 2: _m(6.0)}}
    md = write_paper_tables(str(tmp_path), results)
    assert "Training seeds 0, 1, 2" in md
    assert "image encoder from scratch (seed 0 only) | 4.00 |" in md
    assert "(image and text encoders random) (seeds 0, 2 only) | 5.00 ± 1.00 |" in md
    assert "UniPT pre-training on the pool's pseudo-texts | 45.00 ± 4.08 |" in md  # population std of 40, 50, 45


def test_every_row_names_a_run_the_demo_trains():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_demo", os.path.join(os.path.dirname(__file__), "..", "tools",
                                                                           "run_demo.py"))
    source = open(spec.origin, encoding="utf-8").read()
    for table in PAPER_TABLES:
        for row in table.rows:
            assert f'"{row.run}"' in source, row.run
