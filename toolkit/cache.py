"""Content-addressed cache of trained models.

The key hashes everything that determines a trained model (data set, training
labels, kept samples, loss weights, model and options, recipe, seed), so a
second run that only adds a defense reuses the clean and poisoned models. The
model is identified by its code, not just its name: the model plugin's
distribution and version and the sha256 of the source of the modules defining
its ModelSpec and network classes (:func:`code_identity`), so editing a model
plugin retrains instead of loading weights of the old architecture.
Entries are state dicts in the safetensors layout (:mod:`ptk.tensorfile`: no
pickle, so a crafted file cannot run code; entries of earlier versions, pickled
``.pt`` files, are never read) verified against a sha256 recorded beside them; a corrupt
entry is reported, deleted and recomputed, never loaded.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .atomic import atomic_path, sha256_file, write_json
from .tensorfile import load_tensors, save_tensors

log = logging.getLogger("ptk")


def tensor_digest(t: torch.Tensor | None) -> str | None:
    """sha256 of a tensor's values (None stays None)."""
    if t is None:
        return None
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def module_digest(module_name: str) -> str | None:
    """sha256 of the source of an imported module, or None when Python cannot show it.

    The source (not the module's name) is what a cached model's weights depend
    on. ``inspect.getsource`` re-reads a file whose size or mtime changed, so an
    edited and reloaded module gets a new digest. None for modules without
    source: typed into a REPL or notebook, or shipped compiled only.
    """
    module = sys.modules.get(module_name)
    if module is None:
        return None
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()


def code_identity(*classes: type) -> dict[str, str]:
    """``module.QualName`` of each class -> sha256 of its module's source.

    A class whose source is unavailable is identified by its qualified name
    alone (``"source unavailable"``), with a warning: the cache then cannot
    tell an edited version of it from the old one.
    """
    out: dict[str, str] = {}
    for cls in classes:
        name = f"{cls.__module__}.{cls.__qualname__}"
        digest = module_digest(cls.__module__)
        if digest is None:
            log.warning("ptk: no source for %s; the model cache cannot see changes to its code "
                        "(pass --no-cache after editing it)", name)
        out[name] = digest or "source unavailable"
    return out


def cache_key(parts: dict[str, Any]) -> str:
    """32 hex digits of the sha256 of ``parts`` (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class ModelCache:
    """Trained models by key under ``root/models``; ``root=None`` disables caching."""

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) / "models" if root is not None else None
        self.hits = 0
        self.misses = 0

    def paths(self, key: str) -> tuple[Path, Path]:
        assert self.root is not None
        # safetensors layout, never a pickle; entries of earlier versions (.pt) are never read
        return self.root / f"{key}.safetensors", self.root / f"{key}.json"

    def load(self, key: str, model: nn.Module) -> bool:
        """Fill ``model`` from the cache; False if absent or corrupt (a corrupt entry is deleted)."""
        if self.root is None:
            return False
        weights, meta = self.paths(key)
        if not weights.exists() or not meta.exists():
            return False
        try:
            expected = json.loads(meta.read_text())["sha256"]
            if sha256_file(weights) != expected:
                raise ValueError("checksum mismatch")
            model.load_state_dict(load_tensors(weights))
        except Exception as exc:  # corrupt, truncated, tampered or foreign file
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]  # torch's refusals run to pages
            log.warning("ptk: cache entry %s is corrupt (%s); removed, retraining", weights.name, why)
            weights.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            return False
        self.hits += 1
        return True

    def recorded_seconds(self, key: str) -> float | None:
        """The seconds the entry ``key`` took to train when it was cached (``train_seconds`` in its json); None
        when it is not there or predates that record. Lets a report count a cached model at its real cost."""
        if self.root is None:
            return None
        try:
            seconds = json.loads(self.paths(key)[1].read_text()).get("train_seconds")
        except (OSError, ValueError, AttributeError):
            return None
        return float(seconds) if isinstance(seconds, (int, float)) else None

    def save(self, key: str, model: nn.Module, info: dict[str, Any]) -> None:
        self.misses += 1
        if self.root is None:
            return
        weights, meta = self.paths(key)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        with atomic_path(weights) as tmp:
            save_tensors(tmp, state)
            digest = sha256_file(tmp)
        write_json(meta, {"sha256": digest, **info})

    def get_or_train(self, key: str, build: Callable[[], nn.Module], train: Callable[[nn.Module], nn.Module],
                     info: dict[str, Any]) -> tuple[nn.Module, bool]:
        """The cached model for ``key``, or a freshly trained and cached one. Returns (model, was_cached)."""
        model = build()
        if self.load(key, model):
            return model.eval(), True
        model = train(model)
        self.save(key, model, info)
        return model, False
