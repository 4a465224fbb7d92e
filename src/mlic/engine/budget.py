"""Fitting a run to a time budget (``--max-minutes``): how many epochs, and a schedule that ends with them.

A budgeted run first times a few steps and plans the epochs that fit; a one-cycle or cosine schedule is
re-planned to span exactly those, since the configured epochs would never be reached and the learning rate
would be cut off mid-schedule. After every epoch the plan is checked against the time really taken
(machines are shared; the probe sees a few seconds of them): the schedule is re-planned to end with the epochs
that now fit, shorter or longer, so it is never cut off unannealed and the budget is not left unused.
"""

from __future__ import annotations

from mlic.runtime.console import log

BUDGET_WARMUP_STEPS = 5  # steps run, untimed, before the probe
BUDGET_PROBE_STEPS = 20  # steps timed at the start of a budgeted run to size it
# A run may end up to 10% past its budget rather than stop an epoch early: the planner and the stop rule
# in fit share this, so a recipe with a fixed schedule and one fitted to the budget get the same time.
BUDGET_TOLERANCE = 1.1


def fit_to_budget(max_minutes: float, epochs: int, epoch_seconds: float) -> int:
    """Epochs that fit ``max_minutes`` at ``epoch_seconds`` each (at most ``epochs``).

    Called after the first few steps, so a one-cycle or cosine schedule can span the whole budget instead
    of the configured epochs (which a budgeted run would never reach).
    """
    fitting = max(1, int(max_minutes * 60 * BUDGET_TOLERANCE // max(epoch_seconds, 1e-6)))
    if fitting >= epochs:
        return epochs
    log(f"time budget {max_minutes:g} min: about {epoch_seconds:.0f}s per epoch, so {fitting} epoch(s), not {epochs}")
    return fitting


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


def refit_to_budget(max_minutes: float, epochs: int, epoch: int, planned: int, elapsed: float, epochs_run: int) -> int:
    """After epoch ``epoch``: the epochs the run should have in all, given ``elapsed`` seconds for the
    ``epochs_run`` epochs of this session; ``epoch`` itself means stop. The machine may have got slower or
    faster than the probe saw, in either direction; the configured ``epochs`` stay the upper limit."""
    per_epoch = elapsed / max(epochs_run, 1)  # validation included
    fitting = min(epochs, epoch + int((max_minutes * 60 * BUDGET_TOLERANCE - elapsed) // per_epoch))
    if fitting <= epoch:
        log(f"time budget {max_minutes:g} min: stopping after epoch {epoch}, another would overrun it")
        return epoch
    if fitting != planned:
        log(f"time budget {max_minutes:g} min: epochs take {per_epoch:.0f}s, so {fitting} in all, not {planned}")
    return fitting
