"""Where a run's initial weights come from: the Hugging Face hub (through timm's pretrained configs and
``huggingface_hub``'s download code), or a local file.

``--pretrained`` takes three forms:

- ``hub`` (the flag without a value): the model's default pretrained weights as timm names them, e.g.
  ``resnet18`` -> the hub repo ``timm/resnet18.a1_in1k``;
- ``hf-hub:ORG/NAME[@REVISION]``: that hub repo's weights;
- a path: a local ``.safetensors`` file, or a PyTorch file read weights-only (``models.pretrained``).

Hub files go through ``huggingface_hub.hf_hub_download``: they are cached in the standard Hugging Face
cache (``HF_HOME`` / ``HF_HUB_CACHE``), a cached file is used without asking the network when
``HF_HUB_OFFLINE=1``, and a download shows a progress bar. What was used (repo, revision, file, SHA-256)
is recorded in every checkpoint of the run, and the backbone's own input normalisation (timm's
``pretrained_cfg``) becomes the run's preprocessing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlic.errors import MissingExtraError, UserError
from mlic.models.timm_models import import_timm

HUB = "hub"
HF_PREFIX = "hf-hub:"
# What a timm hub repo holds its weights in, preferred first (timm's own order).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_HINT = "pip install 'mlic[zoo]' (timm and huggingface_hub)"


class HubError(UserError, ValueError):
    """Hub weights that cannot be had; the message names the model, the repo and the cache folder."""


@dataclass(frozen=True)
class Normalization:
    """The input statistics a backbone was pretrained with, and the input size it was pretrained at."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int | None = None


@dataclass(frozen=True)
class InitialWeights:
    """A resolved ``--pretrained``: the local file to load and where it came from."""

    path: Path | None  # None: nothing to load (a resumed run, whose checkpoint holds the weights)
    source: dict[str, Any] = field(default_factory=dict)  # kind, name or repo, revision, file, sha256
    normalization: Normalization | None = None  # None: the file says nothing; mlic's default (ImageNet)


def is_hub_spec(spec: str | None) -> bool:
    return spec == HUB or (spec or "").startswith(HF_PREFIX)


def hub_repo(model_name: str, spec: str) -> tuple[str, str | None]:
    """(repo id, revision or None) that ``spec`` names for ``model_name``."""
    if spec.startswith(HF_PREFIX):
        repo, _, revision = spec[len(HF_PREFIX) :].partition("@")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise HubError(f"--pretrained {spec}: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
        return repo, revision or None
    cfg = _timm_pretrained_cfg(model_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise HubError(
            f"--model {model_name}: timm knows no default hub weights for this model; pass "
            "--pretrained hf-hub:ORG/NAME or a local weights file"
        )
    repo, _, revision = hub_id.partition("@")
    return repo, revision or None


def _timm_pretrained_cfg(model_name: str):
    if model_name == "seed_cnn":
        return None
    timm = import_timm(model_name)
    if not timm.is_model(model_name):
        return None
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(model_name)


def normalization_of(cfg: Any) -> Normalization | None:
    """A timm ``pretrained_cfg`` (object or dict) -> its mean, std and input size."""
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    mean, std, size = get("mean"), get("std"), get("input_size")
    if not mean or not std or len(mean) != 3 or len(std) != 3:
        return None
    return Normalization(tuple(float(v) for v in mean), tuple(float(v) for v in std),
                         int(size[-1]) if size else None)  # fmt: skip


def resolve_initial_weights(model_name: str, spec: str, *, progress: bool = True) -> InitialWeights:
    """Find (downloading where needed and allowed) the weights ``spec`` names for ``model_name``."""
    if not is_hub_spec(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: weights file not found")
        source = {"kind": "file", "file": str(path.resolve()), "sha256": sha256_of(path)}
        return InitialWeights(path, source)
    repo, revision = hub_repo(model_name, spec)
    path = download(model_name, repo, revision, progress=progress)
    # Snapshots live in .../models--ORG--NAME/snapshots/<commit>/<file>: the folder name is the commit.
    source = {"kind": "hub", "model": model_name, "repo": repo, "revision": path.parent.name,
              "requested_revision": revision, "file": path.name, "sha256": sha256_of(path)}  # fmt: skip
    return InitialWeights(path, source, _hub_normalization(model_name, spec, repo, revision))


def _hub_normalization(model_name: str, spec: str, repo: str, revision: str | None) -> Normalization | None:
    """The repo's own ``config.json`` pretrained_cfg where it has one (timm writes it), else timm's for the model."""
    if spec.startswith(HF_PREFIX):
        config = _cached_or_fetched(repo, "config.json", revision)
        if config is not None:
            try:
                data = json.loads(config.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            found = normalization_of(data.get("pretrained_cfg", {})) if isinstance(data, dict) else None
            if found is not None:
                return found
    cfg = _timm_pretrained_cfg(model_name)
    return normalization_of(cfg) if cfg is not None else None


def download(model_name: str, repo: str, revision: str | None, *, progress: bool) -> Path:
    """The weights file of ``repo`` from the Hugging Face cache, downloaded into it when missing."""
    hf = _import_hub(model_name)
    # Submodules imported by name: huggingface_hub loads them lazily, so ``hf.utils`` is not always there yet
    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
    from huggingface_hub.utils import disable_progress_bars

    if not progress:
        disable_progress_bars()
    offline = constants.HF_HUB_OFFLINE
    for name in WEIGHT_FILES:
        try:
            return Path(hf.hf_hub_download(repo, name, revision=revision, library_name="mlic"))
        except LocalEntryNotFoundError:
            continue  # not cached, and no network (or HF_HUB_OFFLINE=1): maybe the other file name is cached
        except EntryNotFoundError:
            continue  # the repo has no file of this name
        except HfHubHTTPError as exc:
            raise HubError(f"--model {model_name}: hub repo {repo}: {str(exc).splitlines()[0]}") from None
    why = "HF_HUB_OFFLINE=1 is set" if offline else "the hub could not be reached or the repo has neither file"
    raise HubError(
        f"--model {model_name}: pretrained weights {repo} ({' or '.join(WEIGHT_FILES)}) are not in the Hugging Face "
        f"cache {constants.HF_HUB_CACHE} and {why}; download them once online, or pass a local weights file"
    )


def _cached_or_fetched(repo: str, filename: str, revision: str | None) -> Path | None:
    import huggingface_hub as hf
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    try:
        return Path(hf.hf_hub_download(repo, filename, revision=revision, library_name="mlic"))
    except (EntryNotFoundError, HfHubHTTPError, OSError):
        return None


def _import_hub(model_name: str):
    try:
        import huggingface_hub
    except ImportError:
        raise MissingExtraError(
            f"--pretrained from the hub for {model_name!r} needs huggingface_hub: {HUB_HINT}"
        ) from None
    return huggingface_hub


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
