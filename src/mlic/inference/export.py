"""Export a checkpoint to ONNX or TorchScript with its preprocessing, sigmoid and thresholds.

The exported graph takes images exactly as decoded and resized by mlic's eval transform, before
any float conversion: uint8 ``(B, 3, S, S)`` in 0..255 by default, or, with
``input_dtype="float32"``, float32 in [0, 1]. It scales, normalises with the checkpoint's mean and
std, runs the model and applies the sigmoid, returning ``(B, C)`` probabilities. The batch size is
dynamic; S is the checkpoint's image size. With ``embedding=True`` (ONNX) a second output, ``embedding``
``(B, D)``, holds the pooled features ``mlic embed`` and ``Predictor.embed`` give, from the same backbone pass.

The metadata (class names, thresholds, preprocessing, input contract, format version) travels
inside the file (ONNX ``metadata_props`` as ``mlic.<key>`` = JSON value; TorchScript
``_extra_files["mlic.json"]``) and in a JSON sidecar ``OUT.json`` for tools that cannot read either.

ONNX goes through ``torch.onnx.export(dynamo=True)`` (torch.export), the exporter PyTorch ships as
default and maintains; the legacy TorchScript-based exporter is deprecated. Its graph optimiser
also folds BatchNorm into the convolutions. TorchScript (``torch.jit.trace``) is deprecated in
PyTorch but still loads from C++ without Python, so it is offered; its deprecation warnings are
silenced here.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlic.checkpoint import load_checkpoint
from mlic.data.transforms import Preprocessing
from mlic.inference.export_format import (
    EMBEDDING_NAME,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    FORMATS,
    INPUT_DTYPES,
    INPUT_NAME,
    METADATA_PREFIX,
    OUTPUT_NAME,
    TORCHSCRIPT_METADATA,
    ExportError,
    metadata_from_props,
    onnx_program,
)
from mlic.inference.features import logits_and_features
from mlic.inference.predictor import Predictor
from mlic.models.fold import count_batchnorm, fold_batchnorm

# The exported model must agree with the checkpoint to this much (probabilities; embeddings relative to their
# largest magnitude, when above 1) or export fails.
PARITY_TOLERANCE = 1e-4


class ExportedModel(nn.Module):
    """Model + preprocessing + sigmoid: uint8 (B, 3, S, S) 0..255 (or float32 0..1) -> (B, C) probabilities,
    and with ``embedding`` also the (B, D) pooled features."""

    def __init__(
        self, model: nn.Module, pre: Preprocessing, input_dtype: str = "uint8", embedding: bool = False
    ) -> None:
        super().__init__()
        if input_dtype not in INPUT_DTYPES:
            raise ValueError(f"input_dtype must be one of {', '.join(INPUT_DTYPES)}, got {input_dtype!r}")
        self.model, self.embedding = model, embedding  # Python bools: resolved while tracing, no graph branch
        self.scale = input_dtype == "uint8"
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """The model's input: what the eval transform makes of the same pixels."""
        x = images.to(torch.float32)
        if self.scale:
            x = x * (1.0 / 255.0)  # the operation order of torchvision's ToDtype(scale=True) and Normalize
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.normalise(images)
        if not self.embedding:
            return torch.sigmoid(self.model(x))
        logits, features = logits_and_features(self.model, x)
        return torch.sigmoid(logits), features


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    fmt: str
    metadata: dict[str, Any]
    max_abs_diff: float  # exported vs checkpoint probabilities on a random batch
    folded_batchnorms: int = 0
    # exported embedding vs Predictor.embed, divided by max(1, its largest |value|) (export --embedding only)
    embedding_max_diff: float | None = None


def export_metadata(meta: dict[str, Any], input_dtype: str, embedding_dim: int | None = None) -> dict[str, Any]:
    """What an exported model carries: everything needed to use it without mlic's checkpoint.

    ``embedding_dim``: the model has the second output ``embedding`` (B, D), described under "embedding".
    """
    from mlic import __version__

    pre = Preprocessing.from_dict(meta["preprocessing"])
    metadata = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "mlic_version": __version__,
        "model": meta["model"],
        "class_names": list(meta["class_names"]),
        "thresholds": meta.get("thresholds"),  # None: the checkpoint has none; predictors then use 0.5
        "preprocessing": pre.to_dict(),
        "input": {
            "name": INPUT_NAME,
            "dtype": input_dtype,
            "range": "0..255" if input_dtype == "uint8" else "0..1",
            "shape": ["batch", 3, pre.image_size, pre.image_size],
            "layout": "RGB, channels first, resized as mlic's eval transform; normalisation happens inside",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", len(meta["class_names"])],
            "activation": "sigmoid",
            # the checkpoint's per-class calibration is folded into the graph's last layer
            "calibration": (meta.get("calibration") or {}).get("method", "none"),
        },  # fmt: skip
    }
    if embedding_dim is not None:
        metadata["embedding"] = {
            "name": EMBEDDING_NAME,
            "shape": ["batch", embedding_dim],
            "features": "globally pooled backbone features, before the classifier head (as mlic embed)",
        }
    return metadata


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    fmt: str = "onnx",
    *,
    opset: int | None = None,
    input_dtype: str = "uint8",
    embedding: bool = False,
) -> ExportResult:
    """Export ``checkpoint`` to ``out`` (ONNX or TorchScript) plus the sidecar ``out + ".json"``.

    ``embedding`` (ONNX only): a second output ``embedding`` (B, D), the pooled features of ``Predictor.embed``.
    The written file is loaded back and checked against the checkpoint on random batches; export
    fails if probabilities (or embeddings) differ by more than ``PARITY_TOLERANCE``.
    """
    _check_options(fmt, input_dtype, opset, embedding)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model, meta = load_checkpoint(checkpoint, device="cpu")
    pre = Preprocessing.from_dict(meta["preprocessing"])
    reference = ExportedModel(model, pre, input_dtype).eval()
    embedder = Predictor(model, meta, torch.device("cpu")) if embedding else None  # what `mlic embed` computes
    metadata = export_metadata(meta, input_dtype, embedder.embedding_dim() if embedder else None)
    folded_model = fold_batchnorm(model)
    folded = count_batchnorm(model) - count_batchnorm(folded_model)
    wrapper = ExportedModel(folded_model, pre, input_dtype, embedding).eval()
    example = _example_batch(pre.image_size, input_dtype, batch=2)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        if fmt == "onnx":
            _write_onnx(wrapper, example, tmp, metadata, opset)
            run = _onnx_runner(tmp, embedding)
        else:
            _write_torchscript(wrapper, example, tmp, metadata)
            run = _torchscript_runner(tmp)
        diff, embedding_diff = _parity(reference, embedder, run, pre.image_size, input_dtype, len(meta["class_names"]))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    sidecar = Path(f"{out}.json")
    sidecar.write_text(json.dumps(metadata, indent=2) + "\n")
    return ExportResult(out, sidecar, fmt, metadata, diff, folded, embedding_diff)


def _check_options(fmt: str, input_dtype: str, opset: int | None, embedding: bool) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if input_dtype not in INPUT_DTYPES:
        raise ExportError(f"unknown input dtype {input_dtype!r}; choose one of: {', '.join(INPUT_DTYPES)}")
    if opset is not None and fmt != "onnx":
        raise ExportError("--opset applies to ONNX export only")
    if embedding and fmt != "onnx":
        raise ExportError("--embedding applies to ONNX export only")


def _example_batch(size: int, input_dtype: str, batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)
    return images if input_dtype == "uint8" else images.float() / 255.0


def _write_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path, metadata: dict, opset: int | None) -> None:
    try:
        import onnx
    except ImportError as exc:
        raise ExportError("ONNX export needs the export extra: pip install 'mlic[export]'") from exc
    outputs = [OUTPUT_NAME, EMBEDDING_NAME] if wrapper.embedding else [OUTPUT_NAME]
    proto = onnx_program(wrapper, example, outputs, opset).model_proto  # weights inline: one self-contained file
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, json.dumps(value)
    proto.doc_string = f"mlic export: {len(metadata['class_names'])} classes, probabilities (sigmoid inside)" + (
        f", embedding ({metadata['embedding']['shape'][1]} pooled features)" if "embedding" in metadata else ""
    )
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def _write_torchscript(wrapper: nn.Module, example: torch.Tensor, path: Path, metadata: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in PyTorch 2.x; see the module docstring
        traced = torch.jit.trace(wrapper, example)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})


def _onnx_runner(path: Path, embedding: bool):
    """images -> (probabilities,) or (probabilities, embedding), run by ONNX Runtime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [OUTPUT_NAME, EMBEDDING_NAME] if embedding else [OUTPUT_NAME]
    return lambda x: tuple(torch.from_numpy(a) for a in session.run(names, {INPUT_NAME: x.numpy()}))


def _torchscript_runner(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")
    return lambda x: (module(x).detach(),)


@torch.no_grad()
def _parity(
    reference: ExportedModel, embedder: Predictor | None, run, size: int, input_dtype: str, num_classes: int
) -> tuple[float, float | None]:
    """(max |p_exported - p_checkpoint|, max |e_exported - Predictor.embed| or None) over batches of 1 and 3
    (the batch dimension must really be dynamic); raises ``ExportError`` past ``PARITY_TOLERANCE``."""
    diff, embedding_diff = 0.0, None if embedder is None else 0.0
    for batch, seed in ((1, 1), (3, 2)):
        x = _example_batch(size, input_dtype, batch, seed)
        got = run(x)
        if tuple(got[0].shape) != (batch, num_classes):
            raise ExportError(f"exported model returned shape {tuple(got[0].shape)} for a batch of {batch}")
        diff = max(diff, (got[0].float() - reference(x)).abs().max().item())
        if embedder is not None:
            expected = torch.from_numpy(embedder.embed_batch(reference.normalise(x)))
            if got[1].shape != expected.shape:
                raise ExportError(f"exported embedding has shape {tuple(got[1].shape)}, not {tuple(expected.shape)}")
            scale = max(1.0, expected.abs().max().item())  # embeddings are not bounded as probabilities are
            embedding_diff = max(embedding_diff, (got[1].float() - expected).abs().max().item() / scale)
    if diff > PARITY_TOLERANCE:
        raise ExportError(f"exported model differs from the checkpoint by {diff:.2e} (tolerance {PARITY_TOLERANCE})")
    if embedding_diff is not None and embedding_diff > PARITY_TOLERANCE:
        raise ExportError(
            f"exported embedding differs from Predictor.embed by {embedding_diff:.2e} relative to its largest "
            f"value (tolerance {PARITY_TOLERANCE})"
        )
    return diff, embedding_diff


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata an exported model carries (ONNX ``metadata_props`` or TorchScript extra file)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return metadata_from_props(props, path)
    extra = {TORCHSCRIPT_METADATA: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[TORCHSCRIPT_METADATA])
