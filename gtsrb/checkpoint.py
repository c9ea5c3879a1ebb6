"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain values (no pickled code): the
ModelConfig as a dict, the weights, and for ``last.pt`` the optimizer,
scheduler and RNG state, so that it rebuilds its own model and resumes.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from gtsrb.archive import DataError
from gtsrb.util import atomic_path


class CheckpointError(DataError):
    """A checkpoint that cannot be read safely. The message names the file."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """torch.save to a temp file beside ``path``, then rename: never a half-written file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _one_line(e: Exception) -> str:
    """torch's multi-line load errors -> the one line that says what was wrong (the CLI prints one line)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("WeightsUnpickler error:") or "unsupported global" in ln.lower():
            return ln
    return lines[0] if lines else type(e).__name__


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load safely: only tensors and plain containers; pickled code is refused."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch words a pickled class or function "Unsupported global" (2.x) or "unsupported GLOBAL"
        # (2.14, for the GLOBAL opcode): code. Anything else it cannot unpickle is garbage.
        if "unsupported global" not in str(e).lower():
            raise CheckpointError(f"{path}: not a readable checkpoint (not a file written by torch.save)") from e
        raise CheckpointError(f"{path}: refused, it holds code (pickled classes or functions), not just "
                              f"weights and plain data ({_one_line(e)})") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({_one_line(e)})") from e
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise CheckpointError(f"{path}: not a gtsrb checkpoint (needs 'model' and 'model_config')")
    if not isinstance(state["model"], dict) or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise CheckpointError(f"{path}: 'model' is not a dict of weight tensors")
    for name, t in state["model"].items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: weight {name} holds NaN or infinite values (a diverged run?); "
                                  f"it would predict nothing meaningful")
    return state
