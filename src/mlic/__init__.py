"""mlic: multi-label image classification. Train, measure honestly, tune thresholds, ship.

The public API mirrors the CLI::

    import mlic
    run = mlic.train("data/train.csv", test="data/test.csv", epochs=5, image_size=64)
    report = mlic.evaluate(run.best_checkpoint, "data/test.csv")
    predictor = mlic.Predictor.from_checkpoint(run.best_checkpoint)
    print(predictor.predict_image("photo.jpg").labels)

Heavy modules (torch, the engine) load on first use so ``import mlic`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Predictor", "TrainConfig", "build_model", "evaluate", "load_config", "train"]

if TYPE_CHECKING:
    from mlic.config import TrainConfig, load_config
    from mlic.inference import Predictor
    from mlic.models import build_model


def train(data: str | None = None, *, config: Any = None, overwrite: bool = False, **options: Any):
    """Train a model; ``options`` are the CLI's flags by name (``epochs``, ``lr``, ``image_size``, ``val``...).

    Returns a ``RunResult`` with the run folder, the best/last checkpoints and the per-epoch history.
    """
    from mlic.config import TrainConfig, apply_flat, load_config
    from mlic.engine.fit import fit

    if config is None:
        cfg = TrainConfig()
    elif isinstance(config, TrainConfig):
        cfg = config
    else:
        cfg = load_config(config)
    cfg = apply_flat(cfg, train=data, **options)
    return fit(cfg, overwrite=overwrite)


def evaluate(checkpoint: Any, data: Any, **options: Any) -> dict[str, Any]:
    """Metrics of a checkpoint on labelled data; see ``mlic.evaluation.evaluate_checkpoint``."""
    from mlic.evaluation import evaluate_checkpoint

    return evaluate_checkpoint(checkpoint, data, **options)


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from mlic.inference import Predictor

        return Predictor
    if name in ("TrainConfig", "load_config"):
        from mlic import config

        return getattr(config, name)
    if name == "build_model":
        from mlic.models import build_model

        return build_model
    raise AttributeError(f"module 'mlic' has no attribute {name!r}")
