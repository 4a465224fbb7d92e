"""The training loop's parts: each test fails if its feature were a no-op."""

import copy

import pytest
import torch
from torch import nn

from mlic.data.dataset import Batch
from mlic.engine.ema import ModelEma
from mlic.engine.loop import NonFiniteLossError, StepOptions, train_one_epoch
from mlic.engine.optim import build_optimizer, build_scheduler, param_groups
from mlic.engine.precision import resolve_precision
from mlic.losses import build_loss

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
    loss = build_loss("bce")
    train_one_epoch(big, [_batch(x, y)], loss, opt_big, CPU, epoch=1, progress=False)
    halves = [_batch(x[:4], y[:4]), _batch(x[4:], y[4:])]
    train_one_epoch(small, halves, loss, opt_small, CPU, epoch=1, opts=StepOptions(accum_steps=2), progress=False)
    for a, b in zip(big.parameters(), small.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # without accumulation, two steps of 4 land somewhere else
    other = _linear()
    train_one_epoch(other, halves, loss, torch.optim.SGD(other.parameters(), lr=0.5), CPU, epoch=1, progress=False)
    assert not torch.allclose(other[1].weight, big[1].weight, atol=1e-6)


def test_nan_batch_leaves_weights_untouched_and_repeated_nans_stop():
    x, y = _data()
    model = _linear()
    before = copy.deepcopy(model.state_dict())
    bad_x = x.clone()
    bad_x[0, 0, 0, 0] = float("nan")
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    stats = train_one_epoch(model, [_batch(bad_x, y)], build_loss("bce"), opt, CPU, epoch=1, progress=False)
    assert stats.skipped_steps == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row"):
        train_one_epoch(
            model,
            [_batch(bad_x, y)] * 3,
            build_loss("bce"),
            opt,
            CPU,
            epoch=1,
            opts=StepOptions(max_bad_steps=3),
            progress=False,
        )


def test_gradient_clipping_bounds_the_update():
    x, y = _data()
    free, clipped = _linear(), _linear()
    w0 = free[1].weight.detach().clone()
    loss = build_loss("bce")
    train_one_epoch(
        free, [_batch(x * 100, y)], loss, torch.optim.SGD(free.parameters(), lr=1.0), CPU, epoch=1, progress=False
    )
    train_one_epoch(
        clipped,
        [_batch(x * 100, y)],
        loss,
        torch.optim.SGD(clipped.parameters(), lr=1.0),
        CPU,
        epoch=1,
        opts=StepOptions(clip_grad=0.01),
        progress=False,
    )
    step_free = torch.cat([(p - q).flatten() for p, q in zip(free[1].parameters(), [w0], strict=False)]).norm()
    step_clipped = (clipped[1].weight - w0).norm()
    assert step_clipped <= 0.01 + 1e-6 < step_free


def test_schedules_shape_the_learning_rate():
    model = _linear()
    opt = build_optimizer(model, "adamw", lr=1.0)
    sched = build_scheduler(opt, "cosine", total_steps=20, warmup_steps=5)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[4] and max(lrs) == pytest.approx(1.0, abs=0.05)
    assert lrs[-1] < 0.05 and all(a >= b for a, b in zip(lrs[5:], lrs[6:], strict=False))
    opt = build_optimizer(model, "sgd", lr=1.0)
    sched = build_scheduler(opt, "onecycle", total_steps=20)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] < max(seen) and seen[-1] < max(seen) / 10
    opt = build_optimizer(model, "adam", lr=0.3)
    sched = build_scheduler(opt, "constant", total_steps=5)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.3


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
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    train_one_epoch(model, [_batch(x, y)] * 5, build_loss("bce"), opt, CPU, epoch=1, ema=ema, progress=False)
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
    opts = StepOptions(precision=precision, channels_last=True)
    model = model.to(memory_format=torch.channels_last)
    stats = train_one_epoch(
        model,
        [_batch(x, y)],
        build_loss("bce"),
        torch.optim.Adam(model.parameters()),
        CPU,
        epoch=1,
        opts=opts,
        progress=False,
    )
    assert stats.images == 4 and torch.isfinite(torch.tensor(stats.loss))
    assert precision.name in ("fp32", "bf16", "fp16")


def test_time_budget_refits_the_schedule_to_the_epochs_that_fit():
    from types import SimpleNamespace

    from mlic.config import TrainConfig
    from mlic.engine.budget import BUDGET_TOLERANCE, fit_to_budget
    from mlic.engine.optim import build_scheduler

    cfg = TrainConfig()
    cfg.optim.schedule, cfg.optim.epochs, cfg.max_minutes = "onecycle", 30, 5.0
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=3e-3)
    t = SimpleNamespace(optimizer=optimizer, scheduler=build_scheduler(optimizer, "onecycle", total_steps=300))
    for _ in range(25):  # the probe's steps, taken under the 30-epoch schedule
        optimizer.step()
        t.scheduler.step()
    # 100 s per epoch in a 5-minute budget: 3 epochs, 3.3 with the overrun tolerance, so still 3
    assert BUDGET_TOLERANCE * 300 // 100 == 3
    assert fit_to_budget(t, cfg, steps_per_epoch=10, epochs=30, epoch_seconds=100.0, steps_done=25) == 3
    lrs = []
    for _ in range(30 - 25):  # the rest of the 3 planned epochs
        optimizer.step()
        t.scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[-1] < 3e-3 * 1e-3  # annealed to ~0 exactly when the planned epochs end
    # a budget that holds all configured epochs leaves them alone
    assert fit_to_budget(t, cfg, steps_per_epoch=10, epochs=2, epoch_seconds=100.0, steps_done=0) == 2


def test_slower_epochs_shorten_the_schedule_instead_of_cutting_it_off():
    from types import SimpleNamespace

    from mlic.config import TrainConfig
    from mlic.engine.budget import refit_to_budget
    from mlic.engine.optim import build_scheduler

    cfg = TrainConfig()
    cfg.optim.schedule, cfg.max_minutes = "onecycle", 5.0  # 330 s with the tolerance
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=3e-3)
    t = SimpleNamespace(optimizer=optimizer, scheduler=build_scheduler(optimizer, "onecycle", total_steps=50))
    for _ in range(20):  # two epochs of 10 steps under a 5-epoch plan
        optimizer.step()
        t.scheduler.step()
    # epochs took 100 s, not the ~60 s planned: one more fits, and the schedule now ends with it
    assert refit_to_budget(t, cfg, 10, epoch=2, planned=5, elapsed=200.0, epochs_run=2) == 3
    for _ in range(10):
        optimizer.step()
        t.scheduler.step()
    assert optimizer.param_groups[0]["lr"] < 3e-3 * 1e-3  # annealed at the new end
    # no room for another epoch: stop (the answer is the epoch just done)
    assert refit_to_budget(t, cfg, 10, epoch=2, planned=5, elapsed=280.0, epochs_run=2) == 2
    # faster than planned: more epochs (6 = 2 + 280 // 50), up to the configured ones
    assert refit_to_budget(t, cfg, 10, epoch=2, planned=4, elapsed=100.0, epochs_run=2) == 6
    cfg.optim.epochs = 5
    assert refit_to_budget(t, cfg, 10, epoch=2, planned=4, elapsed=100.0, epochs_run=2) == 5


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
