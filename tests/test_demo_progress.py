"""tools/run_demo.py's live stage status: the parser of the progress lines the stages print, the
status line it shows, the display (terminal and non-terminal), and ``run`` itself (every byte of
the tool's output in the log, the failure path unchanged).

The progress lines are the real ones: fast-reid's metric printer as the plugin's trainer uses it,
the CLIP stand-in trainer, the pseudo-text generator's image pass, and lines copied from a tiny
demo run's logs."""
from __future__ import annotations

import importlib.util
import io
import logging
import os
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_run_demo():
    spec = importlib.util.spec_from_file_location("_run_demo_under_test", os.path.join(ROOT, "tools", "run_demo.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


rd = _load_run_demo()

# Copied from the logs of `tools/run_demo.py --scale tiny` (pre-training, then fine-tuning).
PRETRAIN_LINE = ("[12/02 00:02:41 fastreid.utils.events]:  eta: 0:00:00  epoch/iter: 0/5  total_loss: 13.05  "
                 "loss_con: 2.813  loss_mlm: 10.25  time: 1.2758  data_time: 0.0266  lr: 1.00e-04  ")
FINETUNE_LINE = ("[12/02 00:02:55 fastreid.utils.events]:  eta: 0:00:00  epoch/iter: 0/2  total_loss: 12.12  "
                 "loss_id: 3.906  loss_rank: 1.921  loss_pgu_id: 3.894  loss_pgu_rank: 1.984  time: 0.4736  "
                 "data_time: 0.0083  lr: 3.00e-04  ")
START_LINE = "[12/02 00:02:51 unipt_plugin.engine.trainer]: Starting training from epoch 0, iteration 0"
TEST_LINE = "[12/02 00:02:55 unipt_plugin.engine.trainer]: Prepare testing set"
OTHER_LINE = "[12/02 00:02:51 unipt_plugin.solver.build]: optimiser Adam: default implementation"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _printer_line(iteration: int, epoch: int, max_iter: int, iter_time: float, losses: dict[str, float]) -> str:
    """The line the plugin's MetricPrinter (fast-reid's CommonMetricPrinter) logs for this storage."""
    from fastreid.utils.events import EventStorage

    from unipt_plugin.engine.hooks import MetricPrinter

    handler = _Lines()
    log = logging.getLogger("fastreid.utils.events")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with EventStorage(0) as storage:
            for _ in range(3):
                storage.put_scalar("time", iter_time)
                storage.put_scalars(**losses)
            storage.iter = iteration
            storage.epoch = epoch
            MetricPrinter(max_iter).write()
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    assert len(handler.lines) == 1, handler.lines
    return handler.lines[0]


def test_fastreid_metric_printer_lines():
    # Iteration 29 (0-based) of 100 in the second epoch, 0.5 s per iteration: eta = 0.5 * (100 - 29 - 1) = 35 s.
    line = _printer_line(29, 1, 100, 0.5, {"total_loss": 2.5, "loss_con": 1.25})
    status = rd.parse_progress_line(line, max_epoch=5)
    assert status.position == "epoch 2/5, iter 30"
    assert status.loss == "total_loss 2.5"
    assert status.eta_s == 35.0 and status.rate is None
    # Over a day left: timedelta's "1 day, 23:13:20" = 1000 s * (200 - 29 - 1) = 170,000 s.
    long = rd.parse_progress_line(_printer_line(29, 0, 200, 1000.0, {"loss_id": 3.0}), max_epoch=None)
    assert long.position == "epoch 1, iter 30" and long.loss == "loss_id 3" and long.eta_s == 170000.0
    # Lines from a real demo run.
    pre = rd.parse_progress_line(PRETRAIN_LINE, max_epoch=1)
    assert (pre.position, pre.loss, pre.eta_s) == ("epoch 1/1, iter 6", "total_loss 13.05", 0.0)
    fine = rd.parse_progress_line(FINETUNE_LINE, max_epoch=10)
    assert (fine.position, fine.loss) == ("epoch 1/10, iter 3", "total_loss 12.12")
    # Without total_loss, the first loss; without an eta (fast-reid's timer warming up), none.
    bare = rd.parse_progress_line(" epoch/iter: 3/79  loss_rank: 0.7  loss_id: 1.1  lr: 1.00e-04  ", max_epoch=4)
    assert (bare.position, bare.loss, bare.eta_s) == ("epoch 4/4, iter 80", "loss_rank 0.7", None)
    for line in (START_LINE, TEST_LINE, OTHER_LINE, "shard 0/1: {'images': 48, 'chunks': 1}"):
        assert rd.parse_progress_line(line, 5) is None


def test_eta_strings():
    assert rd.parse_eta("0:01:10") == 70.0
    assert rd.parse_eta("12:00:05") == 43205.0
    assert rd.parse_eta("2 days, 0:00:01") == 2 * 86400 + 1.0
    assert rd.format_eta(70.9) == "0:01:10"
    assert rd.format_eta(43205) == "12:00:05"
    assert rd.format_eta(-3) == "0:00:00"


def test_clip_standin_progress_line(tmp_path, caplog):
    from unipt_plugin.synthetic import generate_world
    from unipt_plugin.synthetic.clip_standin import read_caption_pairs, standin_model_config, train_clip_standin

    root = tmp_path / "world"
    generate_world(str(root), num_labeled_ids=8, images_per_id=2, num_pool_images=4, size=(32, 16), seed=0)
    config = standin_model_config(image_size=(32, 16), patch_size=8, vision_width=32, vision_layers=1,
                                  vision_head_width=16, text_width=32, text_layers=1, text_heads=2, embed_dim=32)
    caplog.set_level(logging.INFO, logger="unipt_plugin.synthetic.clip_standin")
    train_clip_standin(root, tmp_path / "standin.pt", model_config=config, epochs=2, batch_size=4, seed=0,
                       show_progress=False)
    statuses = [s for s in (rd.parse_progress_line(r.getMessage()) for r in caplog.records) if s is not None]
    # One batch of 4 per step, the incomplete last batch dropped: steps = 2 epochs x (pairs // 4).
    steps = 2 * (len(read_caption_pairs(root)) // 4)
    assert statuses, [r.getMessage() for r in caplog.records]
    last = statuses[-1]
    assert last.position == f"step {steps}/{steps} (epoch 2/2)"
    assert last.eta_s == 0.0
    assert last.loss.startswith("loss ") and float(last.loss.split()[1]) > 0
    assert last.rate.endswith(" steps/s") and float(last.rate.split()[0]) > 0


def test_pseudo_text_progress_lines(monkeypatch, caplog):
    from unipt_plugin.pseudo_text import generate

    clock = {"t": 100.0}
    monkeypatch.setattr(generate, "time", types.SimpleNamespace(monotonic=lambda: clock["t"]))
    caplog.set_level(logging.INFO, logger="unipt_plugin.pseudo_text.generate")
    # 2000 images, 400 already done by an earlier run; this run: 64 images after 10 s, 128 after 20 s.
    progress = generate._ProgressLog(total=2000, initial=400, desc="shard 0/1", every_s=10.0)
    clock["t"] = 105.0
    progress.update(32)  # < 10 s since the start: no line
    clock["t"] = 110.0
    progress.update(32)  # 464 done, 64 in 10 s = 6.4 img/s, (2000 - 464) / 6.4 = 240 s left
    clock["t"] = 120.0
    progress.update(64)  # 528 done, 12.8 / 2 = 6.4 img/s, 1472 / 6.4 = 230 s left
    clock["t"] = 125.0
    progress.close()  # 528 done in 25 s: 5.12 img/s, 1472 / 5.12 = 287.5 -> 287 s
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["shard 0/1: 464/2000 images, 6.4 img/s, eta 0:04:00",
                     "shard 0/1: 528/2000 images, 6.4 img/s, eta 0:03:50",
                     "shard 0/1: 528/2000 images, 5.1 img/s, eta 0:04:47"]
    status = rd.parse_progress_line("INFO unipt_plugin.pseudo_text.generate: " + lines[0])
    assert (status.position, status.rate, status.eta_s) == ("464/2000 images", "6.4 img/s", 240.0)
    # Nothing processed in this run: no closing line.
    caplog.clear()
    generate._ProgressLog(total=10, initial=10, desc="shard 1/2").close()
    assert caplog.records == []


def test_status_line_follows_the_stage():
    p = rd.StageProgress(max_epoch=5)
    assert p.line(5.0, 5.0) == "[0:00:05]  running (0 lines of output)"
    p.feed(OTHER_LINE + "\n", now=90.0)
    assert p.line(6.0, 90.0) == "[0:00:06]  running (1 lines of output)"
    p.feed(START_LINE + "\n", now=95.0)
    assert p.line(10.0, 95.0) == "[0:00:10]  now training"
    line = PRETRAIN_LINE.replace("eta: 0:00:00", "eta: 0:01:10").replace("epoch/iter: 0/5", "epoch/iter: 0/30")
    p.feed(line + "\n", now=100.0)
    # The stage's own ETA, counted down since its line was read: 70 - (110 - 100) = 60 s.
    assert p.line(75.0, 110.0) == "[0:01:15]  epoch 1/5, iter 31, total_loss 13.05  eta 0:01:00"
    p.feed(TEST_LINE + "\n", now=111.0)
    assert p.line(76.0, 111.0) == "[0:01:16]  epoch 1/5, iter 31, total_loss 13.05  now evaluating  eta 0:00:59"
    # Counted down past the estimate: 0, not negative.
    assert p.line(200.0, 300.0).endswith("eta 0:00:00")
    # A tqdm-style line: the text after the last carriage return counts.
    p.feed("shard 0/1:  10%|#         | 200/2000\rINFO unipt_plugin.pseudo_text.generate: shard 0/1: 640/2000 "
           "images, 45.1 img/s, eta 0:00:30\n", now=200.0)
    assert p.line(130.0, 205.0) == "[0:02:10]  640/2000 images, 45.1 img/s  eta 0:00:25"
    p.feed("shard 0/1: {'images': 2000, 'chunks': 1, 'skipped_chunks': 0, 'new_chunks': 1, 'failed': 0}\n", now=210.0)
    assert p.line(140.0, 210.0) == "[0:02:20]  640/2000 images, 45.1 img/s  now merging and writing the report  eta 0:00:20"
    assert p.lines == 6


def test_display_on_a_pipe_prints_every_interval():
    out = io.StringIO()
    d = rd.StatusDisplay(out, interval_s=15.0, tty=False, start=0.0)
    for now in (5.0, 15.0, 20.0, 29.0, 31.0):
        d.tick(f"at {now:.0f}", now)
    assert out.getvalue() == "    at 15\n    at 31\n"
    d.clear()  # nothing to erase off a terminal
    assert out.getvalue() == "    at 15\n    at 31\n"


def test_display_on_a_terminal_rewrites_one_line():
    out = io.StringIO()
    d = rd.StatusDisplay(out, interval_s=15.0, tty=True, start=0.0)
    d.tick("abc", 0.5)  # within a second of the start: not shown
    d.tick("abcdef", 1.0)
    d.tick("ab", 2.5)
    d.clear()
    assert out.getvalue() == "\r    abcdef" + "\r    ab    " + "\r" + " " * 6 + "\r"


_CHILD = r"""
import sys, time
out = sys.stdout.buffer
out.write(b"[01/01 00:00:00 fastreid.utils.events]:  eta: 0:00:04  epoch/iter: 0/9  total_loss: 2.5  lr: 1.00e-04  \n")
out.write(b"caf\xe9 is not UTF-8\n")
time.sleep(0.6)
sys.stderr.write("a warning on stderr\n")
out.write(b"[01/01 00:00:01 fastreid.utils.events]:  eta: 0:00:00  epoch/iter: 1/19  total_loss: 1.5  lr: 1.00e-04  \n")
time.sleep(0.6)
sys.exit(int(sys.argv[1]))
"""
_CHILD_LOG = (b"[01/01 00:00:00 fastreid.utils.events]:  eta: 0:00:04  epoch/iter: 0/9  total_loss: 2.5  lr: 1.00e-04  \n"
              b"caf\xe9 is not UTF-8\n"
              b"a warning on stderr\n"
              b"[01/01 00:00:01 fastreid.utils.events]:  eta: 0:00:00  epoch/iter: 1/19  total_loss: 1.5  lr: 1.00e-04  \n")


def _child(tmp_path) -> str:
    path = tmp_path / "child.py"
    path.write_text(_CHILD)
    return str(path)


def test_run_logs_everything_and_shows_progress(tmp_path, capsys):
    log = tmp_path / "logs" / "stage.log"
    rd.run([sys.executable, _child(tmp_path), "0"], str(log), max_epoch=2, interval_s=0.2)
    assert log.read_bytes() == _CHILD_LOG
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("  $ ") and out[-1].startswith("    done in ") and out[-1].endswith(f"(log: {log})")
    status = out[1:-1]
    assert status and all(line.startswith("    [0:00:0") for line in status)
    assert any("epoch 1/2, iter 10, total_loss 2.5  eta 0:00:0" in line for line in status)
    assert status[-1].endswith("epoch 2/2, iter 20, total_loss 1.5  eta 0:00:00")


def test_run_failure_prints_the_log_tail(tmp_path, capsys):
    log = tmp_path / "stage.log"
    with pytest.raises(SystemExit) as exc:
        rd.run([sys.executable, _child(tmp_path), "3"], str(log), max_epoch=2, interval_s=100.0)
    message = str(exc.value.code)
    assert message.startswith(f"demo stage failed (exit 3); log {log}:\n")
    assert message.endswith(_CHILD_LOG.decode("utf-8", errors="replace"))
    assert log.read_bytes() == _CHILD_LOG
    assert "done in" not in capsys.readouterr().out
