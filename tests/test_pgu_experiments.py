"""The PGU val-split experiments: the report's hand-computed cells, val-only evaluation, and
every 'evaluate' row naming a fine-tuning the demo trains."""
import os

from unipt_plugin.synthetic.pgu_experiments import PGU_EXPERIMENTS, VAL_TESTS, write_pgu_experiments

METRICS = ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP")


def _m(r1):
    return {k: r1 + i for i, k in enumerate(METRICS)}


def test_report_holds_hand_computed_means_and_spreads(tmp_path):
    results = {"val_pgu": {0: _m(40.0), 1: _m(44.0)}, "val_no_pgu": {0: _m(60.0)}}
    md = write_pgu_experiments(str(tmp_path), results, machine="a test machine")
    # mean 42, population std 2; Rank-5 = Rank-1 + 1, mAP = + 3, mINP = + 4
    assert "| demo PGU (gamma = 1), score = global + parts | 0, 1 | 42.00 ± 2.00 | 43.00 ± 2.00 | 45.00 ± 2.00 |" in md
    assert "| without PGU (gamma = 0) | 0 | 60.00 | 61.00 | 63.00 | 64.00 |" in md
    assert "stride 4" not in md  # rows without results are left out
    assert "a test machine" in md
    assert os.path.exists(tmp_path / "pgu_experiments.png")
    assert (tmp_path / "pgu_experiments.md").read_text(encoding="utf-8") == md


def test_experiments_read_the_val_split_only_and_name_demo_runs():
    source = open(os.path.join(os.path.dirname(__file__), "..", "tools", "run_demo.py"), encoding="utf-8").read()
    assert VAL_TESTS == '("CUHKPEDESVal",)'
    names = [e.name for e in PGU_EXPERIMENTS]
    assert len(set(names)) == len(names)
    for e in PGU_EXPERIMENTS:
        assert e.kind in ("evaluate", "train")
        assert "DATASETS.TESTS" not in e.opts  # run_demo sets the val split for every row
        if e.kind == "evaluate":
            assert f'"{e.source}"' in source, e.source
