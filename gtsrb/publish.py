"""Publish results in one step: build them beside the target, then swap them into place.

A command that writes a folder of results (``study.train_best``) builds the new folder in
``publish_dir(target)``; only when the block ends without an error does it take the place of the
old one. A failure, a ``KeyboardInterrupt`` or a kill before that leaves ``target`` as it was.
``check_file_target`` is the early check of a single-file output (written with
``gtsrb.util.atomic_path``), so a bad ``--out`` is refused before the work, not after it.

One writer at a time per folder: two commands publishing into the same tree at once may lose
each other's work.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fnmatch
import glob
import os
import shutil
from pathlib import Path
from typing import Iterator, Sequence

from gtsrb.archive import DataError
from gtsrb.util import pid_alive

_RENAME_EXCHANGE = 2  # renameat2 flag (Linux >= 3.15): swap two paths in one atomic step
_AT_FDCWD = -100


def _temp_name(target: Path, kind: str, pid: int | None = None) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid() if pid is None else pid}")


def _leftovers(target: Path, kind: str) -> list[Path]:
    """``.NAME.<kind>-PID`` entries beside target whose process is gone: left by a crash or a kill."""
    found = []
    for p in target.parent.glob(f".{glob.escape(target.name)}.{kind}-*"):
        pid = p.name.rsplit("-", 1)[1]
        if pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
            found.append(p)
    return sorted(found, key=lambda p: p.lstat().st_mtime)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def recover(target: str | os.PathLike) -> None:
    """Undo what a crash in the middle of a publish left: an old folder set aside whose replacement
    never arrived goes back into place; finished swaps' old folders and half-built temp folders go."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    old = _leftovers(target, "old")
    if old and not os.path.lexists(target):
        os.rename(old.pop(), target)  # the newest set-aside folder is the last published one
    for p in old + _leftovers(target, "tmp"):
        _remove(p)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2; False where the system cannot."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # this kernel or filesystem has no exchange: rename in two steps instead
    raise OSError(err, os.strerror(err), str(b))


def swap_into_place(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target``; the old ``target`` (if any) is removed afterwards.

    Where the system can exchange two paths atomically, readers see the old folder or the new one,
    never neither. Elsewhere the old folder is renamed aside first; a crash between the two renames
    leaves it at ``.NAME.old-PID``, and ``recover`` (run by the next ``publish_dir``) puts it back."""
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    if _exchange(new, target):
        _remove(new)  # now the old folder
        return
    old = _temp_name(target, "old")
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    _remove(old)


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link (no bytes copied, and the old folder keeps its own name for the file), or a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry(old: Path, new: Path, replace: Sequence[str]) -> None:
    """Entries of ``old`` that this command does not write (none of ``replace``'s patterns, not in
    ``new``) into ``new``: other commands' outputs that live inside the same folder."""
    for entry in old.iterdir():
        name = entry.name
        if (any(fnmatch.fnmatchcase(name, pat) for pat in replace) or os.path.lexists(new / name)
                or fnmatch.fnmatchcase(name, ".*.tmp-*") or fnmatch.fnmatchcase(name, ".*.old-*")):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), new / name)
        elif entry.is_dir():
            shutil.copytree(entry, new / name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(new / name))


@contextlib.contextmanager
def publish_dir(target: str | os.PathLike, replace: Sequence[str] | None = None) -> Iterator[Path]:
    """A fresh, empty folder ``.NAME.tmp-PID`` beside ``target`` to build the new results in. When the
    block ends, it takes ``target``'s place in one step; if the block raises (Ctrl-C included) it is
    removed and ``target`` is untouched.

    ``replace``: glob patterns of the entries this command writes. Other entries of the old
    ``target`` (another command's outputs inside it, e.g. a subfolder) are carried into the new one
    as hard links. None: the new folder replaces the old one whole.

    Entering creates the temp folder at once, so an unwritable target fails before the work."""
    target = Path(target)
    if not target.name:  # "." or "/": the temp folder is named after the folder itself
        target = target.resolve()
    if target.exists() and not target.is_dir():
        raise DataError(f"{target}: is a file, not a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        recover(target)
        tmp = _temp_name(target, "tmp")
        tmp.mkdir()
    except OSError as e:
        raise DataError(f"{target}: cannot write here ({e.strerror or e})") from e
    try:
        yield tmp
        if replace is not None and target.is_dir():
            _carry(target, tmp, replace)
        swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_file_target(path: str | os.PathLike) -> Path:
    """Refuse, naming the path, a file output that could not be written: a folder there, a file where
    its folder should be, a folder that cannot be made or written. Run before the work, so that
    nothing is computed for an output that cannot be kept."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected a file path")
    # The nearest folder that exists: the file's own, or the one its missing folders will be made in.
    # Nothing is made here; the probe file is removed at once.
    folder = path.parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DataError(f"{path}: {folder} is a file, not a folder")
    probe = folder / f".{path.name}.probe-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise DataError(f"{path}: cannot write here ({e.strerror or e})") from e
    return path


def check_folder_target(folder: str | os.PathLike, flag: str) -> Path:
    """Make ``folder`` (a run or results folder) now, so an unwritable one is refused, naming ``flag``,
    before the work rather than after it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{flag} {folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{flag} {folder}: cannot make the folder ({e.strerror or e})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"{flag} {folder}: not writable")
    return folder
