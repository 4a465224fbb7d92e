"""Fitting a run to a time budget (``--max-minutes``): how many epochs, and a schedule that ends with them.

A budgeted run first times a few steps and plans the epochs that fit; a one-cycle or cosine schedule is
rebuilt to span exactly those, since the configured epochs would never be reached and the learning rate
would be cut off mid-schedule. After every epoch the plan is checked against the time really taken
(machines are shared; the probe sees a few seconds of them): the schedule is rebuilt to end with the epochs
that now fit, shorter or longer, so it is never cut off unannealed and the budget is not left unused.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mlic.config import TrainConfig
from mlic.engine.console import log
from mlic.engine.optim import build_scheduler

if TYPE_CHECKING:
    from mlic.engine.trainer import Trainer

BUDGET_WARMUP_STEPS = 5  # steps run, untimed, before the probe
BUDGET_PROBE_STEPS = 20  # steps timed at the start of a budgeted run to size it
# A run may end up to 10% past its budget rather than stop an epoch early: the planner and the stop rule
# in fit share this, so a recipe with a fixed schedule and one fitted to the budget get the same time.
BUDGET_TOLERANCE = 1.1


def fit_to_budget(
    t: Trainer, cfg: TrainConfig, steps_per_epoch: int, epochs: int, epoch_seconds: float, steps_done: int
) -> int:
    """Epochs that fit ``max_minutes`` at ``epoch_seconds`` each; the schedule is rebuilt to end with them.

    Called after the first few steps, so a one-cycle or cosine schedule spans the whole budget instead
    of the configured epochs (which a budgeted run would never reach).
    """
    fitting = max(1, int(cfg.max_minutes * 60 * BUDGET_TOLERANCE // max(epoch_seconds, 1e-6)))
    if fitting >= epochs:
        return epochs
    replan_schedule(t, cfg, steps_per_epoch, fitting, steps_done)
    log(
        f"time budget {cfg.max_minutes:g} min: about {epoch_seconds:.0f}s per epoch, so {fitting} epoch(s) "
        f"instead of {epochs}"
    )
    return fitting


def replan_schedule(t: Trainer, cfg: TrainConfig, steps_per_epoch: int, epochs: int, steps_done: int) -> None:
    """Rebuild the schedule to end after ``epochs`` epochs and replay the ``steps_done`` steps already taken,
    so a one-cycle or cosine schedule still anneals to its end when the run must stop sooner than planned."""
    o = cfg.optim
    optim_steps = math.ceil(steps_per_epoch / o.accum_steps)
    for group in t.optimizer.param_groups:  # back to the base lr, then replay the steps already taken
        group["lr"] = group.get("max_lr", group.get("initial_lr", group["lr"]))  # max_lr: one-cycle's base
        for key in ("initial_lr", "max_lr", "min_lr"):
            group.pop(key, None)
    t.scheduler = build_scheduler(
        t.optimizer, o.schedule, total_steps=optim_steps * epochs, warmup_steps=round(o.warmup_epochs * optim_steps)
    )
    for _ in range(steps_done // o.accum_steps):
        t.scheduler.step()


def probe_span_end(max_minutes: float, epoch: int, step: int, total: int) -> int | None:
    """Where the next training span must stop to probe the step time, or None when not probing.

    The first BUDGET_WARMUP_STEPS are run but not timed (allocator growth and kernel selection make them slow;
    counting them planned an epoch short), then BUDGET_PROBE_STEPS are timed. Short epochs are not probed.
    """
    if max_minutes <= 0 or epoch != 0 or total <= 2 * (BUDGET_WARMUP_STEPS + BUDGET_PROBE_STEPS):
        return None
    if step == 0:
        return BUDGET_WARMUP_STEPS
    if step == BUDGET_WARMUP_STEPS:
        return BUDGET_WARMUP_STEPS + BUDGET_PROBE_STEPS
    return None


def epoch_estimate(seconds: float, steps_done: int, total_steps: int, val_steps: int, *, ema: bool) -> float:
    """Seconds per epoch from the timed probe steps (``seconds`` over the steps after the warm-up): training,
    plus validation at about a third of a training step's cost per batch (forward only), twice with an EMA
    copy (both are validated)."""
    per_step = seconds / max(steps_done - BUDGET_WARMUP_STEPS, 1)
    return per_step * (total_steps + val_steps / 3 * (2 if ema else 1))


def refit_to_budget(
    t: Trainer, cfg: TrainConfig, steps_per_epoch: int, epoch: int, planned: int, elapsed: float, epochs_run: int
) -> int:
    """After epoch ``epoch``: the epochs the run should have in all, given ``elapsed`` seconds for the
    ``epochs_run`` epochs of this session. ``epoch`` itself means stop. Any other change of plan (the machine
    got slower or faster than the probe saw) rebuilds the schedule to end with the new last epoch; the
    configured epochs stay the upper limit."""
    per_epoch = elapsed / max(epochs_run, 1)  # validation included
    fitting = min(cfg.optim.epochs, epoch + int((cfg.max_minutes * 60 * BUDGET_TOLERANCE - elapsed) // per_epoch))
    if fitting <= epoch:
        log(f"time budget {cfg.max_minutes:g} min: stopping after epoch {epoch}, another would overrun it")
        return epoch
    if fitting != planned:
        replan_schedule(t, cfg, steps_per_epoch, fitting, epoch * steps_per_epoch)
        log(f"time budget {cfg.max_minutes:g} min: epochs take {per_epoch:.0f}s, so {fitting} in all, not {planned}")
    return fitting
