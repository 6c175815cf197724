"""Cross-domain configs (paper Table 8) and per-test-set reports.

The four configs under configs/CrossDomain/ are checked to be their per-dataset config with only
DATASETS.TESTS (the other dataset) and OUTPUT_DIR changed. Two of them then train for 2 iterations
through tools/train_net.py at the Tiny sizes (configs/Tiny/t2i.yml's keys laid over the
cross-domain config) on raw fixtures of both formats, and must evaluate the other dataset's test
split only: its query and gallery counts (known from the fixture), its name in the report and in
eval_results.json, and no report of the training dataset. An --eval-only run on both test sets
then writes one entry per test set, the target's equal to the training run's evaluation.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from raw_fixtures import make_cuhk_pedes, make_icfg_pedes

import unipt_plugin  # noqa: F401
from unipt_plugin.engine import setup_cfg
from unipt_plugin.evaluation import read_eval_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
CONFIGS = os.path.join(ROOT, "configs")
# direction -> (source folder, source dataset, target dataset)
DIRECTIONS = {"CUHK-to-ICFG": ("CUHK-PEDES", "CUHKPEDES", "ICFGPEDES"),
              "ICFG-to-CUHK": ("ICFG-PEDES", "ICFGPEDES", "CUHKPEDES")}
NO_WEIGHTS = ["MODEL.WEIGHTS", "", "MODEL.VISUAL.WEIGHTS", "", "MODEL.TEXT.WEIGHTS", "", "MODEL.DEVICE", "cpu"]


@pytest.mark.parametrize("backbone", ["deit_small", "vit_base"])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_cross_domain_config_is_the_source_config_tested_on_the_other_dataset(direction, backbone):
    folder, source, target = DIRECTIONS[direction]
    cross = setup_cfg(os.path.join(CONFIGS, "CrossDomain", direction, f"{backbone}.yml"), NO_WEIGHTS)
    base = setup_cfg(os.path.join(CONFIGS, folder, f"{backbone}.yml"), NO_WEIGHTS)
    assert cross.DATASETS.NAMES == (source,) and cross.DATASETS.TESTS == (target,)
    assert cross.OUTPUT_DIR == f"logs/CrossDomain/{direction}/{backbone}"
    # Only what must differ does: the test set and the output folder.
    cross.defrost()
    cross.DATASETS.TESTS, cross.OUTPUT_DIR = base.DATASETS.TESTS, base.OUTPUT_DIR
    assert cross.dump() == base.dump()


def _tiny_config(tmp_path, direction: str) -> str:
    """configs/CrossDomain/<direction>/deit_small.yml with configs/Tiny/t2i.yml's model, input,
    loader, solver and test keys laid over it (not its datasets or output folder)."""
    with open(os.path.join(CONFIGS, "Tiny", "t2i.yml"), encoding="utf-8") as f:
        tiny = yaml.safe_load(f)
    for key in ("_BASE_", "DATASETS", "OUTPUT_DIR"):
        tiny.pop(key, None)
    tiny["_BASE_"] = os.path.join(CONFIGS, "CrossDomain", direction, "deit_small.yml")
    tiny["MODEL"].update(WEIGHTS="")
    tiny["MODEL"]["VISUAL"]["WEIGHTS"] = ""
    tiny["MODEL"]["TEXT"]["WEIGHTS"] = ""
    path = tmp_path / f"tiny_{direction}.yml"
    path.write_text(yaml.safe_dump(tiny), encoding="utf-8")
    return str(path)


def _load_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, TRAIN_NET, *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    return log


def _reported(log: str) -> dict[str, dict[str, float]]:
    """Every fast-reid csv table of the log: {dataset: {metric: value (2 decimals)}}."""
    tables = re.findall(r"\| Dataset\s*\|(.*)\|\n\|[-:| ]+\|\n\| (\S+)\s*\|(.*)\|\n", log)
    return {name: dict(zip((h.strip() for h in header.split("|")), (float(v) for v in row.split("|"))))
            for header, name, row in tables}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cross_domain_data"))
    # Different sizes, so that every count below tells the two datasets apart: CUHK-PEDES 4 train
    # ids (16 caption items), test 16 captions x 8 images; ICFG-PEDES 6 train ids (18 items), test
    # 18 captions x 18 images.
    fixtures = {"CUHKPEDES": make_cuhk_pedes(root, num_ids=4, images_per_id=2),
                "ICFGPEDES": make_icfg_pedes(root, num_ids=6, images_per_id=3)}
    return root, fixtures


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    root, _ = data
    tmp = tmp_path_factory.mktemp("cross_domain_runs")
    out = {}
    for direction in DIRECTIONS:
        run_dir = str(tmp / direction)
        # Batch 8 over 16 (CUHK) or 18 (ICFG) training items: 2 iterations in the one epoch.
        log = _run("--config-file", _tiny_config(tmp, direction), "DATASETS.ROOT", root, "SOLVER.MAX_EPOCH", "1",
                   "SOLVER.IMS_PER_BATCH", "8", "OUTPUT_DIR", run_dir)
        out[direction] = (run_dir, log)
    return out


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_training_on_one_dataset_reports_the_other_test_split_only(data, runs, direction):
    _, fixtures = data
    _, source, target = DIRECTIONS[direction]
    run_dir, log = runs[direction]
    # Trained on the source: its training ids are the classes, 2 iterations were run.
    assert f"Auto-scaling the num_classes={fixtures[source]['train']['ids']}" in log
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        iterations = [json.loads(line)["iteration"] for line in f if line.strip()]
    assert max(iterations) == 1  # iterations 0 and 1
    # Evaluated on the target's test split: its caption and image counts, its name.
    test = fixtures[target]["test"]
    assert re.findall(r"text-to-image: (\d+) queries, (\d+) gallery images", log) == [
        (str(test["captions"]), str(test["images"]))]
    reported = _reported(log)
    assert list(reported) == [target]
    results = _load_json(os.path.join(run_dir, "eval_results.json"))
    assert list(results) == [target]  # one entry, named, although there is one test set
    assert read_eval_results(run_dir) == results[target]
    for key in ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"):
        assert reported[target][key] == pytest.approx(results[target][key], abs=0.005 + 1e-9)
    assert f"Evaluation results for {target} in csv format" in log
    assert f"Evaluation results for {source}" not in log


def test_several_test_sets_get_one_report_and_one_entry_each(data, runs, tmp_path):
    root, fixtures = data
    run_dir, _ = runs["CUHK-to-ICFG"]
    out = str(tmp_path / "both")
    log = _run("--config-file", _tiny_config(tmp_path, "CUHK-to-ICFG"), "--eval-only", "DATASETS.ROOT", root,
               "DATASETS.TESTS", '("ICFGPEDES", "CUHKPEDES")', "OUTPUT_DIR", out,
               "MODEL.WEIGHTS", os.path.join(run_dir, "model_final.pth"))
    assert re.findall(r"text-to-image: (\d+) queries, (\d+) gallery images", log) == [
        (str(fixtures[n]["test"]["captions"]), str(fixtures[n]["test"]["images"])) for n in ("ICFGPEDES", "CUHKPEDES")]
    assert list(_reported(log)) == ["ICFGPEDES", "CUHKPEDES"]
    both = _load_json(os.path.join(out, "eval_results.json"))
    assert list(both) == ["ICFGPEDES", "CUHKPEDES"]
    # The same model on the same split: the training run's evaluation, exactly.
    assert both["ICFGPEDES"] == read_eval_results(run_dir)
    assert read_eval_results(out, "CUHKPEDES") == both["CUHKPEDES"]
    with pytest.raises(ValueError, match=r"holds 2 test sets \['CUHKPEDES', 'ICFGPEDES'\]: name one"):
        read_eval_results(out)
    with pytest.raises(ValueError, match="no results for test set 'RSTPReid'"):
        read_eval_results(out, "RSTPReid")


def test_read_eval_results_reads_the_unnested_form_and_refuses_others(tmp_path):
    flat = {"Rank-1": 50.0, "Rank-5": 75.0, "mAP": 40.0, "metric": 45}
    (tmp_path / "eval_results.json").write_text(json.dumps(flat))
    assert read_eval_results(str(tmp_path)) == flat
    assert read_eval_results(str(tmp_path / "eval_results.json"), "CUHKPEDES") == flat  # it cannot name its set
    for bad in ([1, 2], {}, {"CUHKPEDES": {"Rank-1": 50.0}, "Rank-1": 50.0}, {"CUHKPEDES": {"Rank-1": "high"}}):
        (tmp_path / "eval_results.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / "eval_results.json")) + ": expected"):
            read_eval_results(str(tmp_path))
