"""Run the real training loop on a bare model and a list of batches, without a run folder (tests only)."""

import torch

from mlic.data.transforms import Preprocessing
from mlic.engine.loop import EpochStats, Span, train_one_epoch
from mlic.engine.schedule import LrSchedule
from mlic.engine.trainer import StepOptions, Trainer
from mlic.evaluation.scoring import Forward
from mlic.losses import build_loss


def run_epoch(model, batches, optimizer, *, device="cpu", loss=None, ema=None, span: Span | None = None,
              pre=None, channels_last=False, precision=None, **opts) -> EpochStats:  # fmt: skip
    """One epoch (or ``span``) of ``batches`` through ``train_one_epoch`` at a constant learning rate.

    ``opts`` are ``StepOptions`` fields (accum_steps, clip_grad, max_bad_steps, scaler).
    """
    device = torch.device(device)
    schedule = LrSchedule("constant", len(batches), [g["lr"] for g in optimizer.param_groups])
    forward = Forward(device, pre or Preprocessing(), channels_last, precision)
    t = Trainer(model, model, optimizer, schedule, loss or build_loss("bce"), StepOptions(forward, **opts), ema)
    return train_one_epoch(t, batches, epoch=1, span=span, progress=False)
