import json

import pytest
from PIL import Image

from unipt_plugin.utils.plots import plot_loss_curves, plot_metric_bars, read_metrics


def _write_metrics(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_loss_curves_plot_every_loss_series(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _write_metrics(a, [{"iteration": i, "loss_id": 3.0 - i, "total_loss": 4.0 - i, "lr": 0.1} for i in range(3)])
    _write_metrics(b, [{"iteration": i, "loss_con": 1.0 / (i + 1)} for i in range(3)] + [{"Rank-1": 5.0}])
    out = tmp_path / "loss.png"
    names = plot_loss_curves({"pretrain": a, "finetune": b}, out)
    assert names == ["loss_con", "loss_id", "total_loss"]  # "lr" and eval records are not losses
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 300


def test_read_metrics_names_the_bad_line(tmp_path):
    p = tmp_path / "metrics.json"
    p.write_text('{"iteration": 0}\n{oops\n')
    with pytest.raises(ValueError, match=r"metrics.json:2"):
        read_metrics(p)


def test_metric_bars(tmp_path):
    out = tmp_path / "bars.png"
    plot_metric_bars({"UniPT": {"Rank-1": 40.0, "mAP": 30.0}, "scratch": {"Rank-1": 20.0, "mAP": 15.0}},
                     ["Rank-1", "mAP"], out, errors={"UniPT": {"Rank-1": 1.0, "mAP": 2.0},
                                                     "scratch": {"Rank-1": 1.0, "mAP": 1.0}})
    with Image.open(out) as im:
        assert im.format == "PNG"
