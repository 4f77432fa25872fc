"""Load a frozen ``transformers`` CLIP model with what the extractor needs to use it exactly.

The model comes from a hub id (``openai/clip-vit-base-patch32``, cached by ``huggingface_hub``)
or a local folder written by ``save_pretrained``. Image preprocessing is done by hand from the
folder's ``preprocessor_config.json`` (``CLIPImageProcessor`` would need torchvision or Pillow),
and the weight files are hashed so that a store records which weights made it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clifvqa._device import resolve_device
from clifvqa._safetensors import safetensors_problem
from clifvqa.errors import ClifvqaError

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

_HASH_CACHE: dict[tuple[tuple[str, int, int], ...], str] = {}


class ClipLoadError(ClifvqaError, RuntimeError):
    """The CLIP model could not be loaded; the message says which and how to provide it."""


class ClipWeightsMismatchError(ClifvqaError):
    """A CLIP model whose weights differ from the ones a store or checkpoint recorded."""


ClipWeightsMismatch = ClipWeightsMismatchError  # deprecated alias: the former name


@dataclass
class ClipBundle:
    """A loaded CLIP model (eval mode, on its device) and the facts that determine its numbers.

    Attributes:
        model: the ``transformers.CLIPModel``.
        tokenizer: its ``CLIPTokenizer``.
        image_size: the vision tower's input size c (crops are c x c).
        mean, std: per-channel normalisation of ``x / 255`` pixels (RGB order).
        weights_sha256: sha256 over the weight files' bytes, in file-name order.
        model_id: the hub id, or the local folder as an absolute path (informative: the weights
            hash is what identifies the model).
    """

    model: Any
    tokenizer: Any
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_sha256: str
    model_id: str


def looks_like_path(model: str) -> bool:
    """True when ``model`` can only be meant as a folder, never as a hub id (``org/name``)."""
    return (
        model.startswith(("/", "./", "../", "~", "."))
        or "\\" in model
        or model.count("/") > 1
        or os.path.exists(model)
    )


def looks_like_hub_id(model: str) -> bool:
    """True for ``org/name`` that is not a local path: the form of every CLIP model on the hub."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model) is not None and not looks_like_path(model)


def load_clip(model: str, device: str = "auto") -> ClipBundle:
    """Load CLIP model + tokenizer from a hub id or a local folder.

    Args:
        model: hub id (looked up in the local Hugging Face cache, downloaded when online) or a
            folder saved with ``save_pretrained``. A path that does not exist is an error, never
            a hub lookup. A folder is recorded (``ClipBundle.model_id``) as its absolute path, so
            that it can be found again from any working directory.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... (see :func:`clifvqa._device.resolve_device`).
            The weights are loaded in float32; the extractor uses autocast for half precision.

    Raises:
        ClipLoadError: the folder is missing or incomplete, a weight file is damaged or not
            safetensors (named, with what is wrong; it is never executed), or the hub id is
            neither cached nor reachable; one line that says how to provide the model.
    """
    import torch
    from safetensors import SafetensorError  # type: ignore[attr-defined, unused-ignore]  # stubs < 0.5 lack it
    from transformers import CLIPModel, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    local = looks_like_path(model)
    if local:
        folder = Path(model).expanduser().resolve()
        if not folder.is_dir():
            raise ClipLoadError(
                f"CLIP model folder {model} does not exist (or is not a folder){_looked_at(model)}")
        source: str = str(folder)
    else:
        source = model

    def load(local_files_only: bool):
        clip = CLIPModel.from_pretrained(source, dtype=torch.float32, local_files_only=local_files_only)
        return clip, CLIPTokenizer.from_pretrained(source, local_files_only=local_files_only)

    online = False
    try:
        try:
            # The cache first: a cached hub model loads without any network request.
            clip, tokenizer = load(local_files_only=True)
        except OSError:
            if local:
                raise
            online = True
            clip, tokenizer = load(local_files_only=False)
    except SafetensorError as exc:  # a damaged weight file: say which and how
        raise ClipLoadError(_weights_problem(folder if local else None, model, exc)) from exc
    except (OSError, ValueError) as exc:
        if local:
            hint = f"make sure {source} holds config.json, the weights (model.safetensors) and tokenizer files"
        elif looks_like_hub_id(model):
            hint = ("download it on a connected machine with "
                    f"`huggingface-cli download {model} --local-dir DIR`, copy DIR here and pass --clip-model DIR")
        else:
            hint = f"there is no folder {model!r}{_looked_at(model)}; pass a model folder or a hub id org/name"
        raise ClipLoadError(f"cannot load CLIP model {model!r}: {_first_line(exc)}; {hint}") from exc
    clip = clip.to(resolve_device(device)).eval().requires_grad_(False)
    files = _weight_files(folder if local else None, model)
    mean, std = _normalisation(folder if local else None, model, fetch=online)
    return ClipBundle(
        model=clip,
        tokenizer=tokenizer,
        image_size=int(clip.config.vision_config.image_size),
        mean=mean,
        std=std,
        weights_sha256=hash_files(files),
        model_id=source,
    )


def hash_files(files: list[Path]) -> str:
    """sha256 over the concatenated bytes of ``files`` (in the given order), memoised per
    (path, size, mtime) so that repeated loads of one model in a process hash it once."""
    stats = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if stats not in _HASH_CACHE:
        digest = hashlib.sha256()
        for path in files:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
        _HASH_CACHE[stats] = digest.hexdigest()
    return _HASH_CACHE[stats]


def _weight_files(folder: Path | None, model: str) -> list[Path]:
    """The weight files ``from_pretrained`` loaded: one file, or all shards of an index in
    sorted name order. Safetensors is preferred, as ``from_pretrained`` does."""
    for index_name, single in zip(WEIGHT_INDEXES, WEIGHT_FILES):
        index = _model_file(folder, model, index_name)
        if index is not None:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            paths = [_model_file(folder, model, name) for name in shards]
            if any(p is None for p in paths):
                raise ClipLoadError(f"CLIP model {model!r}: a weight shard listed in {index_name} is missing")
            return [p for p in paths if p is not None]
        path = _model_file(folder, model, single)
        if path is not None:
            return [path]
    raise ClipLoadError(f"CLIP model {model!r}: found no model.safetensors or pytorch_model.bin to hash")


def _normalisation(
    folder: Path | None, model: str, fetch: bool = False
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``image_mean``/``image_std`` from ``preprocessor_config.json``, else the OpenAI CLIP values
    (``fetch``: download the file of a hub model when it is not cached)."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    config = _model_file(folder, model, "preprocessor_config.json", fetch=fetch)
    if config is not None:
        data = json.loads(config.read_text())
        mean, std = data.get("image_mean", mean), data.get("image_std", std)
    if len(mean) != 3 or len(std) != 3:
        raise ClipLoadError(f"CLIP model {model!r}: image_mean/image_std must have 3 values, got {mean} / {std}")
    m, s = [float(v) for v in mean], [float(v) for v in std]
    return (m[0], m[1], m[2]), (s[0], s[1], s[2])


def _model_file(folder: Path | None, model: str, name: str, fetch: bool = False) -> Path | None:
    """``name`` in the local folder, or in the Hugging Face cache for a hub id; None if absent.

    With ``fetch`` a hub file missing from the cache is downloaded (``from_pretrained`` of the
    model does not fetch ``preprocessor_config.json``).
    """
    if folder is not None:
        path = folder / name
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    cached = try_to_load_from_cache(model, name)
    if isinstance(cached, str):
        return Path(cached)
    if cached is None and fetch:  # None: not cached (a sentinel object means "known absent")
        try:
            return Path(hf_hub_download(model, name))
        except (OSError, EntryNotFoundError):  # absent from the repo, or unreachable
            return None
    return None


def _weights_problem(folder: Path | None, model: str, exc: Exception) -> str:
    """The one-line ClipLoadError message for a weight file the safetensors loader refused."""
    try:
        files = _weight_files(folder, model)
    except (ClipLoadError, OSError, ValueError):
        files = []
    for path in files:
        problem = safetensors_problem(path) if path.suffix == ".safetensors" else None
        if problem:
            fix = ("copy the model folder again" if folder is not None
                   else "delete it from the Hugging Face cache and download again")
            return f"CLIP weights {path} cannot be loaded: {problem}; {fix}"
    return f"cannot load the CLIP weights of {model!r}: {_first_line(exc)}; copy or download the model again"


def _looked_at(model: str) -> str:
    """`` (looked for /abs/path)`` for a relative path, so the user sees which folder was meant."""
    path = Path(model).expanduser()
    return "" if path.is_absolute() else f" (looked for {path.resolve()})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_recorded_clip(recorded: Mapping[str, Any], clip_model: str | None = None, device: str = "auto") -> ClipBundle:
    """Load the CLIP model a provenance ``clip`` block names (or ``clip_model``, another copy
    of the same weights) and refuse any other weights.

    Raises:
        ClipLoadError: the model cannot be loaded. When the recorded model is missing, the
            message names the recorded path and says to pass ``--clip-model`` (a copy of the
            same weights); the hub download hint comes only for a recorded hub id (``org/name``).
        ClipWeightsMismatchError: its weights hash differs from ``recorded["weights_sha256"]``.
    """
    model = clip_model or recorded["model"]
    same_weights = f"any copy of the weights with sha256 {recorded['weights_sha256'][:16]}... works"
    if clip_model is None and not looks_like_hub_id(model) and not Path(model).expanduser().is_dir():
        # A folder recorded on another machine (or, before paths were recorded absolute, from
        # another working directory): looking it up on the hub would only mislead.
        raise ClipLoadError(
            f"the CLIP model folder the features were made with, {model}, is not found "
            f"here{_looked_at(model)}; "
            f"pass --clip-model pointing at a copy of the same weights ({same_weights})"
        )
    try:
        bundle = load_clip(model, device)
    except ClipLoadError as exc:
        if clip_model is not None:
            raise
        raise ClipLoadError(f"{exc} ({same_weights})") from exc
    if bundle.weights_sha256 != recorded["weights_sha256"]:
        raise ClipWeightsMismatchError(
            f"CLIP model {model!r} has weights sha256 {bundle.weights_sha256[:16]}..., but the features were made with "
            f"{recorded['model']!r} whose weights sha256 is {recorded['weights_sha256'][:16]}...; pass those weights "
            "with --clip-model"
        )
    return bundle
