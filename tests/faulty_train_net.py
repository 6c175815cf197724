"""tools/train_net.py with one fault injected, for the resume and non-finite-loss tests.

    UNIPT_FAULT=kill:N        the process SIGKILLs itself right after iteration N (no cleanup,
                              no checkpoint: as if the machine died)
    UNIPT_FAULT=term:N        the process sends itself SIGTERM right after iteration N (as a
                              cluster's pre-emption does; the trainer saves and exits 75)
    UNIPT_FAULT=nan:N:TERM    the loss term TERM (e.g. loss_mlm) is NaN at iteration N

Everything else is the real entry point: same arguments, same trainer, same hooks.
"""
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import train_net  # noqa: E402  (tools/train_net.py, which imports the plugin first)
from fastreid.engine.hooks import HookBase  # noqa: E402
from fastreid.utils.events import get_event_storage  # noqa: E402

from unipt_plugin.engine import UniPTTrainer, default_argument_parser, launch  # noqa: E402
from unipt_plugin.modeling.meta_arch import unipt_pretrain, unipt_t2i  # noqa: E402

KIND, *ARGS = os.environ["UNIPT_FAULT"].split(":")


class SignalAfterIteration(HookBase):
    def __init__(self, iteration: int, sig: signal.Signals) -> None:
        self.iteration = iteration
        self.sig = sig

    def after_step(self) -> None:
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), self.sig)


class FaultyTrainer(UniPTTrainer):
    def build_hooks(self):
        hooks = super().build_hooks()
        if KIND in ("kill", "term"):
            sig = signal.SIGKILL if KIND == "kill" else signal.SIGTERM
            hooks.insert(0, SignalAfterIteration(int(ARGS[0]), sig))  # before the pre-emption check
        return hooks


def _nan_at(iteration: int, term: str):
    real = unipt_pretrain.check_finite_losses

    def check(losses):
        if get_event_storage().iter == iteration:
            losses[term] = losses[term] * float("nan")
        return real(losses)
    return check


if KIND == "nan":
    unipt_pretrain.check_finite_losses = unipt_t2i.check_finite_losses = _nan_at(int(ARGS[0]), ARGS[1])
elif KIND not in ("kill", "term"):
    sys.exit(f"UNIPT_FAULT={os.environ['UNIPT_FAULT']!r}: expected kill:N, term:N or nan:N:TERM")
train_net.UniPTTrainer = FaultyTrainer

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    cfg = train_net.setup_cfg(args.config_file, args.opts)
    launch(train_net.main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,), device=cfg.MODEL.DEVICE, forward_signals=cfg.SOLVER.PREEMPT_SIGNALS)
