"""Type and range checks for the typed configs (ModelConfig, TrainConfig): one layer at the boundary.

A config arrives from JSON files, the command line, a study's search space and old checkpoints, so
``"8"`` for an int, ``10`` classes or a negative batch size must stop where the config is built, with
a message that names the field, not deep inside a training step. The checks read each dataclass
field's annotation (int, float, bool, str, Literal, tuple, optional) and a table of ranges.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import types
import typing
from typing import Any, Callable, Literal, Union

from gtsrb.archive import DataError


class ConfigError(DataError, ValueError):
    """A config field of the wrong type or outside its range. The message names the field.

    A DataError (the CLI's one-line error) and a ValueError (what a bad value is in Python)."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` as annotation ``tp`` wants it (a JSON list becomes a tuple, an int a float), or
    ConfigError naming ``where``. Never parses strings: ``"8"`` is not an int."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} is not {_type_name(tp)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {value!r} is not a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: has {len(value)} entries, expected {len(args)}")
        return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    # numbers.Integral / Real: numpy's scalars too (a value read back from pandas or HDF5).
    is_bool = isinstance(value, bool) or type(value).__name__ == "bool_"
    if tp is bool:
        if is_bool:
            return bool(value)
        raise ConfigError(f"{where}: {value!r} is not true or false")
    if tp is int:
        if isinstance(value, numbers.Integral) and not is_bool:
            return int(value)
        raise ConfigError(f"{where}: {value!r} is not an integer")
    if tp is float:
        if isinstance(value, numbers.Real) and not is_bool:
            if not math.isfinite(value):
                raise ConfigError(f"{where}: {value!r} is not a finite number")
            return float(value)
        raise ConfigError(f"{where}: {value!r} is not a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: {value!r} is not a string")
    return value  # an annotation this checker does not know: left to the class's own checks


def check_dataclass(obj: Any, ranges: dict[str, tuple[float | None, float | None, str]], what: str) -> None:
    """Coerce every field of the dataclass ``obj`` to its annotation (in place, frozen or not), then
    check ``ranges``: field -> (low, high, how), ``how`` one of "[]", "[)", "(]", "()" (None: open)."""
    hints = typing.get_type_hints(type(obj), include_extras=False)
    for f in dataclasses.fields(obj):
        value = coerce(getattr(obj, f.name), hints[f.name], f"{what}.{f.name}")
        object.__setattr__(obj, f.name, value)
    for name, (low, high, how) in ranges.items():
        value = getattr(obj, name)
        if value is None:
            continue
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            ok_low = low is None or (v >= low if how[0] == "[" else v > low)
            ok_high = high is None or (v <= high if how[1] == "]" else v < high)
            if not (ok_low and ok_high):
                lo = "-inf" if low is None else f"{low:g}"
                hi = "inf" if high is None else f"{high:g}"
                raise ConfigError(f"{what}.{name}: {value!r} is outside {how[0]}{lo}, {hi}{how[1]}")


# argparse types for the command lines' numbers (gtsrb and every python -m study.*): a count of 0 or
# -5 is refused where it is typed, with the flag's name (argparse adds it), not a step later.
def _number(text: str, kind: type, expected: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
    return value


def _argument_type(kind: type, ok: Callable[[float], bool], expected: str, name: str) -> Callable[[str], float]:
    """An argparse ``type=``: ``text`` as ``kind`` where ``ok`` holds, else the flag's error saying ``expected``."""
    def parse(text: str):
        value = _number(text, kind, expected)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text}: expected {expected}")
        return value

    parse.__name__ = name  # argparse names the type in some of its messages
    return parse


positive_int = _argument_type(int, lambda v: v >= 1, "a whole number above 0", "positive_int")
non_negative_int = _argument_type(int, lambda v: v >= 0, "a whole number >= 0", "non_negative_int")
positive_float = _argument_type(float, lambda v: v > 0, "a number above 0", "positive_float")
non_negative_float = _argument_type(float, lambda v: v >= 0, "a number >= 0", "non_negative_float")
fraction = _argument_type(float, lambda v: 0 < v <= 1, "a share above 0 and at most 1", "fraction")  # of a split
