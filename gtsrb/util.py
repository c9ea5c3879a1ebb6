"""Small helpers for every layer: atomic writes, file hashes, the machine description."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temp path beside ``path`` to write to; renamed onto ``path`` when the block ends, removed if
    it raises (Ctrl-C included). Readers never see half a file. ``suffix`` ends the temp name, for
    writers that insist on an extension (``np.savez`` adds ``.npz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files ``atomic_path`` left beside ``path`` in processes that no longer run
    (``.NAME.tmp-PID``, with any suffix): a kill -9 or a power cut skips its cleanup, and nothing
    else would ever remove them. A live process's temp file is its write in progress and stays.
    Returns what was removed."""
    path = Path(path)
    removed = []
    prefix = f".{path.name}.tmp-"
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed  # no folder yet: nothing was left there
    for p in siblings:
        pid = p.name[len(prefix):].split(".", 1)[0] if p.name.startswith(prefix) else ""
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass  # gone already, or not ours to remove: the write itself does not depend on it
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # another user's process, or no valid pid at all
    return True


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (archives, checkpoints), read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# The CPU flags that decide the precision and the kernels torch runs.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def machine() -> dict:
    """The CPU (model and the flags that matter here), cores, torch; the GPU where there is one.
    Recorded beside every speed or accuracy figure."""
    import torch  # here, so that packing (which needs none of torch) does not pay for its import

    fields: dict[str, str] = {}  # the first core's entries of /proc/cpuinfo
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    info = {
        "cpu": fields.get("model name") or platform.processor(),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info

