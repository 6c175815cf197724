"""UniPTStepTrainer's pieces that the end-to-end runs cannot show on the CPU: micro-batch
splitting, the optimiser seeing unscaled gradients under a GradScaler (what a fused optimiser
with gradient clipping needs), the freeze window (SOLVER.FREEZE_ITERS) under a GradScaler, and
the test-time autocast choice."""
import pytest
import torch
from torch import nn

from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.engine.train_loop import UniPTStepTrainer, split_batch
from unipt_plugin.engine.trainer import _test_autocast, inference_on_dataset


def test_split_batch_deals_rows_round_robin():
    batch = {"x": torch.arange(6), "y": torch.arange(6) * 10}
    parts = split_batch(batch, 2)
    assert parts[0]["x"].tolist() == [0, 2, 4] and parts[1]["y"].tolist() == [10, 30, 50]
    with pytest.raises(ValueError, match="ACCUM_STEPS = 4"):
        split_batch(batch, 4)


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0]))

    def forward(self, batch):
        return {"loss": (self.w * batch["x"]).sum()}


class _RecordingSGD(torch.optim.SGD):
    """Claims to unscale inside its step, as torch's fused Adam does, and records the gradient it sees."""

    _step_supports_amp_scaling = True

    def step(self, closure=None, grad_scaler=None, **kwargs):
        self.seen = self.param_groups[0]["params"][0].grad.clone()
        return super().step(closure)


def test_the_optimiser_sees_unscaled_gradients_under_a_grad_scaler():
    model = _Model()
    opt = _RecordingSGD(model.parameters(), lr=0.1)
    data = [{"x": torch.tensor([[3.0, 5.0]])}]
    trainer = UniPTStepTrainer(model, data, opt, device_type="cpu", amp=True, dtype=torch.float16)
    assert trainer.grad_scaler is not None and trainer.grad_scaler.get_scale() > 1
    trainer.forward_backward(data[0])
    trainer.optimizer_step()
    torch.testing.assert_close(opt.seen, torch.tensor([3.0, 5.0]))  # d(w . x)/dw = x, not scale * x


class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([1.0, -2.0]))
        self.b = nn.Parameter(torch.tensor([0.5, 3.0]))

    def forward(self, batch):
        return {"loss": ((self.a + self.b) * batch["x"]).sum()}


def test_the_freeze_window_follows_the_iteration_under_a_grad_scaler():
    model = _Two()
    opt = torch.optim.SGD([{"params": [model.a], "freeze_status": "freeze"},
                           {"params": [model.b], "freeze_status": "normal"}], lr=0.1)
    data = {"x": torch.tensor([[3.0, 5.0]])}
    trainer = UniPTStepTrainer(model, [data], opt, device_type="cpu", amp=True, dtype=torch.float16, freeze_iters=2)
    trainer.forward_backward(data)
    with pytest.raises(RuntimeError, match="trainer.iter"):
        trainer.optimizer_step()
    opt.zero_grad(set_to_none=True)
    for it, a, b in [(1, [1.0, -2.0], [0.2, 2.5]), (2, [0.7, -2.5], [-0.1, 2.0])]:  # SGD: p - 0.1 * x
        trainer.iter = it  # iteration 1 is inside the window (< 2), iteration 2 is not
        trainer.forward_backward(data)
        trainer.optimizer_step()
        torch.testing.assert_close(model.a.detach(), torch.tensor(a))
        torch.testing.assert_close(model.b.detach(), torch.tensor(b))
        assert model.a.grad is None and model.b.grad is None
    # freeze_iters 0 (the default): flagged groups are stepped, no iteration needed
    model = _Two()
    opt = torch.optim.SGD([{"params": [model.a], "freeze_status": "freeze"}], lr=0.1)
    trainer = UniPTStepTrainer(model, [data], opt, device_type="cpu")
    trainer.forward_backward(data)
    trainer.optimizer_step()
    torch.testing.assert_close(model.a.detach(), torch.tensor([0.7, -2.5]))


def test_test_autocast_follows_the_keys():
    cfg = get_unipt_cfg()
    cfg.MODEL.DEVICE, cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.DTYPE = "cuda", True, "bfloat16"
    assert _test_autocast(cfg) == torch.bfloat16
    cfg.TEST.AMP.ENABLED = False
    assert _test_autocast(cfg) is None
    cfg.TEST.AMP.ENABLED, cfg.MODEL.DEVICE = True, "cpu"
    assert _test_autocast(cfg) is None


def test_inference_under_autocast_hands_float32_features_to_the_evaluator():
    class Evaluator:
        def reset(self):
            self.seen = []

        def process(self, inputs, outputs):
            self.seen.append(outputs)

        def evaluate(self):
            return {"n": len(self.seen)}

    model = nn.Linear(4, 3).train()
    evaluator = Evaluator()
    loader = [torch.randn(2, 4), torch.randn(2, 4)]
    assert inference_on_dataset(model, loader, evaluator, autocast=torch.bfloat16) == {"n": 2}
    assert all(o.dtype == torch.float32 for o in evaluator.seen)
    # computed under bf16 autocast: equal to the bf16 product, not the float32 one
    expected = torch.nn.functional.linear(loader[0].bfloat16(), model.weight.bfloat16(), model.bias.bfloat16())
    torch.testing.assert_close(evaluator.seen[0], expected.float())
    assert model.training  # the model's mode is put back
