"""The training loop's parts: each test fails if its feature were a no-op."""

import copy

import pytest
import torch
from torch import nn
from training import run_epoch

from mlic.data.dataset import Batch
from mlic.engine.ema import ModelEma
from mlic.engine.loop import NonFiniteLossError
from mlic.engine.optim import build_optimizer, param_groups
from mlic.engine.schedule import LrSchedule
from mlic.runtime.precision import resolve_precision

CPU = torch.device("cpu")


def _batch(x, y):
    return Batch(x, y, torch.ones_like(y), torch.arange(len(x)), [])


def _data(n=8, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 4, 4, generator=g), (torch.rand(n, c, generator=g) > 0.5).float()


def _linear(c=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(32, c))


def test_gradient_accumulation_equals_one_big_batch():
    x, y = _data()
    big, small = _linear(), _linear()
    opt_big = torch.optim.SGD(big.parameters(), lr=0.5)
    opt_small = torch.optim.SGD(small.parameters(), lr=0.5)
    run_epoch(big, [_batch(x, y)], opt_big)
    halves = [_batch(x[:4], y[:4]), _batch(x[4:], y[4:])]
    run_epoch(small, halves, opt_small, accum_steps=2)
    for a, b in zip(big.parameters(), small.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # without accumulation, two steps of 4 land somewhere else
    other = _linear()
    run_epoch(other, halves, torch.optim.SGD(other.parameters(), lr=0.5))
    assert not torch.allclose(other[1].weight, big[1].weight, atol=1e-6)


def test_nan_batch_leaves_weights_untouched_and_repeated_nans_stop():
    x, y = _data()
    model = _linear()
    before = copy.deepcopy(model.state_dict())
    bad_x = x.clone()
    bad_x[0, 0, 0, 0] = float("nan")
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    stats = run_epoch(model, [_batch(bad_x, y)], opt)
    assert stats.skipped_steps == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row"):
        run_epoch(model, [_batch(bad_x, y)] * 3, opt, max_bad_steps=3)


def test_gradient_clipping_bounds_the_update():
    x, y = _data()
    free, clipped = _linear(), _linear()
    w0 = free[1].weight.detach().clone()
    run_epoch(free, [_batch(x * 100, y)], torch.optim.SGD(free.parameters(), lr=1.0))
    run_epoch(clipped, [_batch(x * 100, y)], torch.optim.SGD(clipped.parameters(), lr=1.0), clip_grad=0.01)
    step_free = torch.cat([(p - q).flatten() for p, q in zip(free[1].parameters(), [w0], strict=False)]).norm()
    step_clipped = (clipped[1].weight - w0).norm()
    assert step_clipped <= 0.01 + 1e-6 < step_free


def _rates(schedule: LrSchedule, optimizer, steps: int) -> list[float]:
    """The rate of each optimizer step, as the loop applies them."""
    schedule.apply(optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.advance(optimizer)
    return rates


def test_schedules_shape_the_learning_rate():
    model = _linear()
    opt = build_optimizer(model, "adamw", lr=1.0)
    lrs = _rates(LrSchedule("cosine", 20, [1.0, 1.0], warmup_steps=5), opt, 20)
    assert lrs[0] < lrs[4] and max(lrs) == pytest.approx(1.0, abs=0.05)
    assert lrs[-1] < 0.05 and all(a >= b for a, b in zip(lrs[5:], lrs[6:], strict=False))
    opt = build_optimizer(model, "sgd", lr=1.0)
    seen = _rates(LrSchedule("onecycle", 20, [1.0, 1.0]), opt, 20)
    assert seen[0] < max(seen) and seen[-1] < max(seen) / 10
    opt = build_optimizer(model, "adam", lr=0.3)
    assert _rates(LrSchedule("constant", 5, [0.3, 0.3]), opt, 5) == [0.3] * 5


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_onecycle_equals_torch_onecyclelr(name):
    """The plan-as-data schedule reproduces torch's OneCycleLR (rates and momentum), which it replaced."""
    torch.manual_seed(0)
    a, b = _linear(), _linear()
    ours, theirs = build_optimizer(a, name, lr=3e-3), build_optimizer(b, name, lr=3e-3)
    schedule = LrSchedule("onecycle", 37, [g["lr"] for g in ours.param_groups])
    reference = torch.optim.lr_scheduler.OneCycleLR(theirs, max_lr=[3e-3, 3e-3], total_steps=38)
    schedule.apply(ours)
    for _ in range(37):
        for g, h in zip(ours.param_groups, theirs.param_groups, strict=True):
            assert g["lr"] == pytest.approx(h["lr"], rel=1e-12, abs=1e-18)
            key = "betas" if "betas" in g else "momentum"
            assert g[key] == pytest.approx(h[key], rel=1e-12)
        ours.step(), theirs.step()
        schedule.advance(ours), reference.step()


def test_a_replanned_schedule_ends_with_the_new_plan_and_survives_a_state_round_trip():
    model = _linear()
    opt = build_optimizer(model, "adamw", lr=3e-3)
    schedule = LrSchedule("onecycle", 300, [3e-3, 3e-3])
    _rates(schedule, opt, 25)  # the budget probe's steps, under a 30-epoch plan
    schedule.replan(30, opt)  # 3 epochs of 10 fit the budget
    copy_ = LrSchedule("onecycle", 1, [3e-3, 3e-3])
    copy_.load_state_dict(schedule.state_dict())
    assert (copy_.total_steps, copy_.step) == (30, 25)
    lrs = _rates(schedule, opt, 5)
    assert lrs[-1] < 3e-3 * 1e-2 < lrs[0]  # annealed to ~0 exactly when the planned epochs end
    with pytest.raises(KeyError):
        copy_.load_state_dict({"name": "onecycle"})


def test_no_weight_decay_on_norms_and_biases():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 5, 5))
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(no_decay["params"]) == 4  # conv bias, BN weight and bias, linear bias


def test_ema_tracks_between_start_and_current_weights():
    model = _linear()
    ema = ModelEma(model, decay=0.9)
    start = model[1].weight.detach().clone()
    x, y = _data()
    run_epoch(model, [_batch(x, y)] * 5, torch.optim.SGD(model.parameters(), lr=1.0), ema=ema)
    e, now = ema.module[1].weight, model[1].weight
    assert ema.updates == 5
    assert not torch.allclose(e, start) and not torch.allclose(e, now)
    assert (e - now).norm() < (start - now).norm()


@pytest.mark.parametrize("name", ["fp32", "bf16", "fp16", "auto"])
def test_every_precision_mode_runs_on_cpu(name):
    from mlic.models import build_model

    precision = resolve_precision(name, CPU)
    model = build_model("seed_cnn", 3, widths=[8, 8, 16, 16], hidden=16)
    x, y = torch.randn(4, 3, 32, 32), (torch.rand(4, 3) > 0.5).float()
    model = model.to(memory_format=torch.channels_last)
    stats = run_epoch(
        model, [_batch(x, y)], torch.optim.Adam(model.parameters()), precision=precision, channels_last=True
    )
    assert stats.images == 4 and torch.isfinite(torch.tensor(stats.loss))
    assert precision.name in ("fp32", "bf16", "fp16")


def test_time_budget_plans_the_epochs_that_fit():
    from mlic.engine.budget import BUDGET_TOLERANCE, fit_to_budget

    # 100 s per epoch in a 5-minute budget: 3 epochs, 3.3 with the overrun tolerance, so still 3
    assert BUDGET_TOLERANCE * 300 // 100 == 3
    assert fit_to_budget(5.0, epochs=30, epoch_seconds=100.0) == 3
    # a budget that holds all configured epochs leaves them alone
    assert fit_to_budget(5.0, epochs=2, epoch_seconds=100.0) == 2


def test_slower_or_faster_epochs_change_the_plan():
    from mlic.engine.budget import refit_to_budget

    # 5 min = 330 s with the tolerance. Epochs took 100 s, not the ~60 s planned: one more fits
    assert refit_to_budget(5.0, 30, epoch=2, planned=5, elapsed=200.0, epochs_run=2) == 3
    # no room for another epoch: stop (the answer is the epoch just done)
    assert refit_to_budget(5.0, 30, epoch=2, planned=5, elapsed=280.0, epochs_run=2) == 2
    # faster than planned: more epochs (6 = 2 + 280 // 50), up to the configured ones
    assert refit_to_budget(5.0, 30, epoch=2, planned=4, elapsed=100.0, epochs_run=2) == 6
    assert refit_to_budget(5.0, 5, epoch=2, planned=4, elapsed=100.0, epochs_run=2) == 5


def test_budget_probe_skips_warm_up_steps_and_short_epochs():
    from mlic.engine.budget import BUDGET_PROBE_STEPS, BUDGET_WARMUP_STEPS, epoch_estimate, probe_span_end

    assert probe_span_end(5.0, epoch=0, step=0, total=1000) == BUDGET_WARMUP_STEPS
    assert (
        probe_span_end(5.0, epoch=0, step=BUDGET_WARMUP_STEPS, total=1000) == BUDGET_WARMUP_STEPS + BUDGET_PROBE_STEPS
    )
    assert probe_span_end(5.0, epoch=0, step=BUDGET_WARMUP_STEPS + BUDGET_PROBE_STEPS, total=1000) is None
    assert probe_span_end(0.0, epoch=0, step=0, total=1000) is None  # no budget
    assert probe_span_end(5.0, epoch=0, step=0, total=40) is None  # too short to be worth probing
    # 20 timed steps in 10 s: 0.5 s a step; 100 steps + 30 validation batches at a third, twice with EMA
    assert epoch_estimate(10.0, BUDGET_WARMUP_STEPS + 20, 100, 30, ema=False) == 0.5 * (100 + 10)
    assert epoch_estimate(10.0, BUDGET_WARMUP_STEPS + 20, 100, 30, ema=True) == 0.5 * (100 + 20)
