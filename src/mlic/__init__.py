"""mlic: multi-label image classification. Train, measure honestly, tune thresholds, ship.

The public API mirrors the CLI::

    import mlic
    run = mlic.train("data/train.csv", test="data/test.csv", epochs=5, image_size=64)
    report = mlic.evaluate(run.best_checkpoint, "data/test.csv")
    predictor = mlic.Predictor.from_checkpoint(run.best_checkpoint)
    print(predictor.predict_image("photo.jpg").labels)
    vectors = predictor.embed(["a.jpg", "b.jpg"])  # (2, D) float32 embeddings: the pooled features

Heavy modules (torch, the engine) load on first use so ``import mlic`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Predictor", "TrainConfig", "build_model", "evaluate", "load_config", "train"]

if TYPE_CHECKING:
    from mlic.config import TrainConfig, load_config
    from mlic.inference.predictor import Predictor
    from mlic.models import build_model


def train(
    data: str | None = None,
    *,
    config: Any = None,
    overrides: list[str] | tuple[str, ...] = (),
    overwrite: bool = False,
    resume: str | None = None,
    **options: Any,
):
    """Train a model; ``options`` are the CLI's flags by their flat names (``epochs``, ``lr``, ``image_size``,
    ``val``..., every key of ``mlic.config.SETTINGS``), ``overrides`` its ``--set`` strings, ``config`` a
    ``TrainConfig`` or a YAML file. Returns a ``RunResult`` with the run folder, the best/last checkpoints and
    the per-epoch history.
    """
    from mlic.config import resolve_config
    from mlic.engine.fit import fit

    cfg = resolve_config(config, overrides, train=data, **options)
    return fit(cfg, overwrite=overwrite, resume=resume)


def evaluate(checkpoint: Any, data: Any, **options: Any) -> dict[str, Any]:
    """Metrics of a checkpoint on labelled data (a label file or records), as ``mlic evaluate`` writes them.

    ``options``: ``fmt``, ``image_root``, ``label_delimiter``, ``threshold``, and the fields of
    ``mlic.evaluation.scoring.BatchOptions`` (``device``, ``batch_size``, ``num_workers``, ``progress``).
    """
    import dataclasses

    from mlic.evaluation.evaluate import evaluate_checkpoint
    from mlic.evaluation.scoring import BatchOptions

    batch_keys = {f.name for f in dataclasses.fields(BatchOptions)}
    batch = BatchOptions(**{k: options.pop(k) for k in list(options) if k in batch_keys})
    return evaluate_checkpoint(checkpoint, data, batch=batch, **options)


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from mlic.inference.predictor import Predictor

        return Predictor
    if name in ("TrainConfig", "load_config"):
        from mlic import config

        return getattr(config, name)
    if name == "build_model":
        from mlic.models import build_model

        return build_model
    raise AttributeError(f"module 'mlic' has no attribute {name!r}")
