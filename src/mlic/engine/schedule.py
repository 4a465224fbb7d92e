"""The learning-rate schedule: the rate of every optimizer step as a function of (step, planned steps).

The plan (how many optimizer steps the run will take) is plain data, saved with the trainer state, so a time
budget can re-plan it (``replan``) and a resumed run gets it back with everything else, without reaching into
the optimizer. Before each optimizer step ``apply`` writes the rate of that step into the optimizer's groups.

``constant`` is the seed's. ``cosine`` warms up linearly, then anneals to zero. ``onecycle`` follows
torch's ``OneCycleLR`` with its defaults, formula for formula (Smith and Topin 2018, "Super-Convergence"):
from peak/25 up to the peak over the first 30% of the steps, then down to peak/25/1e4, cosine-shaped, while
momentum (Adam's beta1) goes the other way between 0.95 and 0.85.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mlic.config import SCHEDULES

# torch.optim.lr_scheduler.OneCycleLR's defaults
ONECYCLE_PCT_START, ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 0.3, 25.0, 1e4
ONECYCLE_MOMENTUM = (0.85, 0.95)  # (at the peak rate, at either end)


@dataclass
class LrSchedule:
    name: str
    total_steps: int  # planned optimizer steps; ``replan`` changes it
    base_lrs: list[float]  # per parameter group: the configured rate (one-cycle's peak)
    warmup_steps: int = 0  # cosine only
    step: int = 0  # optimizer steps taken

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; choose one of: {', '.join(SCHEDULES)}")
        self.total_steps = max(int(self.total_steps), 1)

    def rates(self, step: int) -> tuple[list[float], float | None]:
        """(the rate of each group at optimizer step ``step``, the momentum then or None)."""
        if self.name == "constant":
            return list(self.base_lrs), None
        if self.name == "cosine":
            return [base * self._cosine(step) for base in self.base_lrs], None
        return self._onecycle(step)

    def _cosine(self, step: int) -> float:
        warmup = min(self.warmup_steps, self.total_steps - 1)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(self.total_steps - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def _onecycle(self, step: int) -> tuple[list[float], float]:
        # OneCycleLR with total_steps = planned + 1, so the last planned step is not yet at the very end
        total = self.total_steps + 1
        rise_end = ONECYCLE_PCT_START * total - 1
        low_m, high_m = ONECYCLE_MOMENTUM
        if step <= rise_end:
            pct, ends, momentum = step / rise_end, ("initial", "peak"), (high_m, low_m)
        else:  # past the plan (a budget cut it short after the fact) the rate stays at its end
            pct = (min(step, total - 1) - rise_end) / (total - 1 - rise_end)
            ends, momentum = ("peak", "min"), (low_m, high_m)
        rates = []
        for base in self.base_lrs:
            at = {"initial": base / ONECYCLE_DIV, "peak": base, "min": base / ONECYCLE_DIV / ONECYCLE_FINAL_DIV}
            rates.append(_anneal_cos(at[ends[0]], at[ends[1]], pct))
        return rates, _anneal_cos(*momentum, pct)

    def apply(self, optimizer: torch.optim.Optimizer) -> None:
        """Set the optimizer's groups to this step's rate (and one-cycle's momentum)."""
        rates, momentum = self.rates(self.step)
        for group, rate in zip(optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
            if momentum is not None:
                if "betas" in group:
                    group["betas"] = (momentum, *group["betas"][1:])
                else:
                    group["momentum"] = momentum

    def advance(self, optimizer: torch.optim.Optimizer) -> None:
        """One optimizer step was taken: move to the next step's rate."""
        self.step += 1
        self.apply(optimizer)

    def replan(self, total_steps: int, optimizer: torch.optim.Optimizer) -> None:
        """The run will take ``total_steps`` optimizer steps in all: the schedule now ends with them."""
        self.total_steps = max(int(total_steps), 1)
        self.apply(optimizer)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            raise KeyError(f"schedule state has keys {sorted(state)}, expected {sorted(expected)}")
        if state["name"] != self.name or len(state["base_lrs"]) != len(self.base_lrs):
            raise ValueError(f"schedule state is for {state['name']!r} with {len(state['base_lrs'])} groups")
        for key, value in state.items():
            setattr(self, key, value)


def _anneal_cos(start: float, end: float, pct: float) -> float:
    """OneCycleLR's cosine annealing from ``start`` (pct 0) to ``end`` (pct 1)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
