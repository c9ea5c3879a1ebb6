"""How a stored result is read and written, whatever its kind: JSON read with a bound and written atomically,
CSV tables with their columns checked, typed fields pulled out of a record, and the two fields every run record
carries (``command``, ``machine``). Every failure is a ``RecordError`` (a ``DataError``) naming the file, and the
field where one is at fault."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gtsrb.archive import DataError
from gtsrb.util import machine, write_text_atomic

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MAX_JSON_BYTES", "Fields", "RecordError", "RecordMissing", "command_line", "machine", "pm",
           "read_csv", "read_json", "read_text", "run_record", "write_json"]

# Records, profiles and configs are kilobytes to a few megabytes; a file far beyond that is not one,
# and reading it whole would take the memory (``/dev/zero`` has no end at all).
MAX_JSON_BYTES = 256 * 1024**2


class RecordError(DataError):
    """A stored result that cannot be read, or that does not hold what its kind must. ``path``: the file;
    ``problem``: what is wrong, in words that name the field; ``field``: that field's name (None when the
    whole file is at fault)."""

    def __init__(self, path: Path | str, problem: str, field: str | None = None):
        self.path, self.problem, self.field = Path(path), problem, field
        super().__init__(f"{path}: {problem}")


class RecordMissing(RecordError):
    """The file is not there (a command that writes it has not run yet)."""


def read_text(path: Path) -> str:
    """A text file, UTF-8; RecordError naming it when it cannot be read or decoded."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(path, f"not UTF-8 text (byte {e.start})") from None
    except FileNotFoundError:
        raise RecordMissing(path, "not found") from None
    except OSError as e:
        raise RecordError(path, f"cannot read ({e.strerror or e})") from None


def read_json(path: Path):
    """A stored JSON file (a record, a profile, a config) -> its value. RecordError naming the file when it
    cannot be read, is not UTF-8, is not JSON (a truncated write included) or is too large to be one."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError as e:
        raise RecordMissing(path, f"cannot read ({e.strerror or e})") from None
    except OSError as e:
        raise RecordError(path, f"cannot read ({e.strerror or e})") from None
    if len(raw) > MAX_JSON_BYTES:
        raise RecordError(path, f"over {MAX_JSON_BYTES // 1024**2} MB, too large for a JSON record")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RecordError(path, f"not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise RecordError(path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None


def write_json(path: Path, value) -> None:
    """``value`` as indented JSON, written atomically: a reader sees the old file or the new one, never half."""
    write_text_atomic(path, json.dumps(value, indent=1) + "\n")


def read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """A CSV table with at least the columns ``required``. RecordMissing when it is not there, RecordError
    when it is not CSV or lacks a column."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise RecordMissing(path, "not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise RecordError(path, f"cannot be read as CSV ({type(e).__name__}: {str(e).strip()[:200]})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise RecordError(path, f"malformed, no column {', '.join(f'`{c}`' for c in missing)}", missing[0])
    return df


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_KINDS = {"int": (_is_int, "a whole number"), "number": (_is_number, "a number"),
          "str": (lambda v: isinstance(v, str), "a string"), "bool": (lambda v: isinstance(v, bool), "true or false"),
          "object": (lambda v: isinstance(v, dict), "an object"), "list": (lambda v: isinstance(v, list), "a list")}


class Fields:
    """Typed reads from one JSON object of a record. An absent or null field reads as None, or fails when it is
    required; a field of the wrong type always fails. Each failure is a RecordError naming the file and the
    field's dotted path (``test.accuracy``, ``history[3].val_accuracy``)."""

    def __init__(self, path: Path, obj: Any, what: str, prefix: str = ""):
        self.path, self.prefix = Path(path), prefix
        if not isinstance(obj, dict):
            where = f"`{prefix.rstrip('.')}` is" if prefix else "the file is"
            raise RecordError(path, f"{where} not {what} (a JSON object)", prefix.rstrip(".") or None)
        self.obj = obj

    def get(self, key: str, kind: str, required: bool = False):
        name = self.prefix + key
        value = self.obj.get(key)
        if value is None:
            if required:
                raise RecordError(self.path, f"`{name}` missing", name)
            return None
        ok, what = _KINDS[kind]
        if not ok(value):
            raise RecordError(self.path, f"`{name}` is not {what} ({json.dumps(value)[:40]})", name)
        return float(value) if kind == "number" else value

    def sub(self, key: str, what: str, required: bool = False) -> Fields:
        """A nested object's fields; an absent one (when not required) reads as an empty object."""
        value = self.obj.get(key)
        if value is None and not required:
            value = {}
        return Fields(self.path, value, what, f"{self.prefix}{key}.")


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The ``command`` field of a run record: ``python -m <module> <arguments>``, quoted for a POSIX shell so
    that ``shlex.split`` gives the arguments back. ``argv`` None: this process's own (``sys.argv[1:]``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", "-m", module, *args])


def run_record(module: str, argv: Sequence[str] | None, seconds: float, **fields) -> dict:
    """A training run's record: ``fields`` (with the run's per-epoch ``history``), then what every run record
    ends with: ``wall_seconds`` (this process, one sitting), ``train_seconds`` (every epoch's training in the
    history, resumed or adopted ones included), the ``machine`` and the ``command``."""
    return {**fields, "wall_seconds": round(seconds, 1),
            "train_seconds": round(sum(h["seconds"] for h in fields["history"]), 1),
            "machine": machine(), "command": command_line(module, argv)}


def pm(values, scale: float = 100.0, digits: int = 2) -> str:
    """mean ± sample std (n-1), scaled; a single run shows no std."""
    v = np.asarray(values, float) * scale
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"
