"""What runs a checkpoint's model inside a ``Predictor``: PyTorch, or ONNX Runtime on an ONNX copy of it.

``auto`` is ONNX Runtime when the export extra is installed and the device is the CPU, else PyTorch: on a CPU its
batch-1 latency is lower, and it suffers less from cores shared with other work (``benchmarks/latency.py``
prints the ratios on a machine).

The ONNX copy is the Predictor's folded model followed by the sigmoid, not ``mlic export``'s graph: it takes
the Predictor's own input, the normalised float32 ``(B, 3, S, S)`` of the eval transform, so
``predict_probabilities`` takes the same tensors whichever engine runs it, and gives the same probabilities to
float rounding (checked on a random batch when the session opens; more than ``ENGINE_TOLERANCE`` apart is an
error). It cannot reuse ``mlic.inference.export`` itself, which imports ``predictor`` (an import circle); both take
their exporter settings from ``export_format.onnx_program``.

Exporting takes seconds (``torch.onnx.export(dynamo=True)``, the exporter ``mlic export`` uses too), so the copy
is kept under the mlic cache folder (``engines/<key>.onnx``), the key a hash of the weights, the model's
structure and the versions of mlic and torch: the next server start or ``from_checkpoint`` opens it at once.

Torch-free at import: ``mlic serve --help`` lists ``ENGINES``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlic.errors import MissingExtraError, UserError
from mlic.inference.export_format import INPUT_NAME, OUTPUT_NAME, onnx_program

if TYPE_CHECKING:
    import numpy as np
    import torch

ENGINES = ("auto", "torch", "onnx")
ENGINE_TOLERANCE = 1e-4  # probabilities, ONNX copy vs the PyTorch model; the same bound as mlic export's parity
CACHE_VERSION = 1  # bump when the exported graph changes for the same weights
MISSING_EXTRA = "engine 'onnx' needs the export extra: pip install 'mlic[export]'"


class EngineError(UserError, ValueError):
    """An engine that cannot run here: unknown name, a device it does not support, a model it cannot copy."""


def onnx_available() -> bool:
    """Whether the export extra is installed: onnxruntime runs the copy; onnx and onnxscript write it."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx", "onnxscript"))


def choose_engine(engine: str, device_type: str) -> str:
    """``torch`` or ``onnx`` for ``engine`` on a device of ``device_type`` (``cpu``, ``cuda``, ``mps``)."""
    if engine not in ENGINES:
        raise EngineError(f"engine {engine!r} is not allowed; choose one of: {', '.join(ENGINES)}")
    if engine == "auto":
        return "onnx" if device_type == "cpu" and onnx_available() else "torch"
    if engine == "onnx" and device_type != "cpu":
        raise EngineError(f"engine 'onnx' runs on the CPU, not on {device_type}; use --device cpu or --engine torch")
    if engine == "onnx" and not onnx_available():
        raise MissingExtraError(MISSING_EXTRA)
    return engine


def session_options(ort: Any, num_threads: int | None = None) -> Any:
    """ONNX Runtime options for one caller at a time: ``num_threads`` intra-op threads (default: one per core
    this process may use), not spinning between calls, every graph optimisation, operators run one after another."""
    from mlic.runtime.cpu import cpu_count

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or cpu_count()
    options.inter_op_num_threads = 1  # sequential execution uses none; keep ORT from starting a pool
    # Between two calls there is decoding and preprocessing in PyTorch, whose own threads then compete with ORT's
    # spinning ones for the cores. seed_cnn, 128 px, 2 cores, decode + model of one PNG alternately: 8.0 ms with
    # spinning (decode 3.2 ms, model 4.9), 5.0 ms without (1.0 + 4.0). Back-to-back model calls alone lose ~4%.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


class OnnxModel:
    """The ONNX copy of a model, run by ONNX Runtime: (B, 3, S, S) normalised images -> (B, C) probabilities."""

    def __init__(self, session: Any, source: str) -> None:
        self.session, self.source = session, source  # source: the cached file, or "memory"

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        import torch

        # NCHW float32 on the CPU, whatever layout the caller's tensor has
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def start_engine(
    engine: str, model: torch.nn.Module, device: torch.device, image_size: int, num_threads: int | None = None
) -> tuple[str, OnnxModel | None]:
    """(the engine that runs, its ONNX model or None for PyTorch) for ``engine`` and ``model`` on ``device``.

    ``auto`` falls back to PyTorch, with a warning, when the model cannot be copied to ONNX; ``onnx`` fails then.
    """
    chosen = choose_engine(engine, device.type)
    if chosen == "torch":
        return "torch", None
    try:
        return "onnx", onnx_model(model, image_size, num_threads=num_threads)
    except MissingExtraError:
        raise
    except Exception as exc:  # torch.export meets operators and control flow it cannot trace in some models
        first = " ".join(str(exc).split())[:200]
        if engine == "onnx":
            raise EngineError(f"engine 'onnx': the model could not be run by ONNX Runtime ({first}); "
                              "use --engine torch") from exc  # fmt: skip
        from mlic.runtime.console import warn

        warn(f"warning: engine auto: running the PyTorch model, since its ONNX copy failed ({first})")
        return "torch", None


def onnx_model(model: torch.nn.Module, image_size: int, *, num_threads: int | None = None) -> OnnxModel:
    """An ONNX Runtime session on ``model`` + sigmoid (exported once, then read from the cache), parity checked."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingExtraError(MISSING_EXTRA) from exc
    path = _cached_copy(model, image_size)
    source: Any = str(path) if isinstance(path, Path) else path  # bytes when the cache cannot be written
    session = ort.InferenceSession(source, session_options(ort, num_threads), providers=["CPUExecutionProvider"])
    copy = OnnxModel(session, str(path) if isinstance(path, Path) else "memory")
    _check_parity(model, copy, image_size)
    return copy


def _cached_copy(model: torch.nn.Module, image_size: int) -> Path | bytes:
    """The cached ONNX file of ``model`` (exported now if missing); its bytes alone if the cache is unwritable."""
    from mlic.data.cache import usable_root
    from mlic.runtime.console import warn

    try:
        folder = usable_root() / "engines"
        path = folder / f"{_cache_key(model, image_size)}.onnx"
        if path.is_file():
            return path
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return _export(model, image_size)
    warn(f"exporting the model to ONNX for the onnx engine (once; kept in {folder})")
    data = _export(model, image_size)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)  # whole or absent: two servers starting at once each write their own tmp
    except OSError:
        tmp.unlink(missing_ok=True)
        return data
    return path


def _cache_key(model: torch.nn.Module, image_size: int) -> str:
    """A hash of everything the exported graph depends on: weights, structure, image size, versions."""
    import hashlib

    import torch

    from mlic import __version__

    digest = hashlib.blake2b(digest_size=16)
    header = (CACHE_VERSION, __version__, torch.__version__, image_size, type(model).__qualname__, repr(model))
    digest.update(repr(header).encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def _export(model: torch.nn.Module, image_size: int) -> bytes:
    """``model`` + sigmoid as ONNX bytes: float32 (B, 3, S, S) in, (B, C) probabilities out, B dynamic."""
    import torch

    example = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    program = onnx_program(torch.nn.Sequential(model, torch.nn.Sigmoid()).eval(), example, [OUTPUT_NAME])
    return program.model_proto.SerializeToString()


def _check_parity(model: torch.nn.Module, copy: OnnxModel, image_size: int) -> None:
    """The copy must give the model's probabilities on a random batch of 3 (the batch size really dynamic)."""
    import torch

    x = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = torch.sigmoid(model(x).float()).numpy()
    got = copy(x)
    if got.shape != expected.shape or float(abs(got - expected).max()) > ENGINE_TOLERANCE:
        diff = float(abs(got - expected).max()) if got.shape == expected.shape else float("nan")
        raise EngineError(
            f"the ONNX copy differs from the PyTorch model by {diff:.2e} (shape {got.shape}, tolerance "
            f"{ENGINE_TOLERANCE}); use --engine torch"
        )
