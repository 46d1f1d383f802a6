"""Named features: rows sent as {column name: value} -> the input tensor, its columns in the
order the signature names them (`columns` of a 2-D input). Clients then never depend on the
order the model was trained with, and a missing or unknown name is a 400 that says which.

Only requests that send objects come here: the positional forms pay one isinstance check.
"""
from __future__ import annotations

from operator import itemgetter
from typing import Any

import numpy as np

from .codec import to_array
from .errors import BadRequest
from .signature import TensorSpec

MAX_NAMES_SHOWN = 10  # names quoted in one error message; the rest are counted
MAX_NAME_CHARS = 64  # a client's unknown name is quoted at most this long


def is_named(value: Any) -> bool:
    """A row as an object, or rows as a list of objects (the first one decides)."""
    return isinstance(value, dict) or (isinstance(value, list) and bool(value) and isinstance(value[0], dict))


def named_rows(value: Any, spec: TensorSpec, what: str, one_row: bool) -> np.ndarray:
    """`value` (an object when `one_row`, else a list of objects) -> array [rows, columns] of
    the spec's dtype, validated as the positional form is (dtype, range, finite values)."""
    columns = spec.columns
    if not columns:
        raise BadRequest(
            f"{what}: the model's signature names no columns for input {spec.name!r}, so values "
            f"cannot be sent by name: send them as a list, in the order the model takes them"
        )
    if one_row:
        if not isinstance(value, dict):
            raise BadRequest(f"{what}: expected one row: an object mapping column names to values")
        rows = [value]
    else:
        if not isinstance(value, list):
            raise BadRequest(f"{what}: expected a list of rows, each an object mapping column names to values")
        rows = value
    width = len(columns)
    get = itemgetter(*columns) if width > 1 else (lambda row: (row[columns[0]],))
    allowed = _ALLOWED[spec.dtype.kind]
    table = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BadRequest(f"{_where(what, i, one_row)}: expected an object mapping column names to values, "
                             f"got {_json_type(row)}")  # fmt: skip
        try:
            values = get(row)
        except KeyError:
            raise _wrong_names(row, columns, _where(what, i, one_row)) from None
        if len(row) != width:  # every column is there, so the extra keys are unknown
            raise _wrong_names(row, columns, _where(what, i, one_row))
        # Scalars of the input's kind only: numpy would read true as 1.0, or [1.8] as a dimension.
        if not allowed.issuperset(map(type, values)):
            raise BadRequest(_bad_values(row, columns, spec, _where(what, i, one_row)))
        table.append(values)
    # Ranges and finiteness as for values sent by position.
    return to_array(table, spec, what)


def _where(what: str, i: int, one_row: bool) -> str:
    return what if one_row else f"{what}[{i}]"


def _quote(names: list[str]) -> str:
    shown = ", ".join(repr(n if len(n) <= MAX_NAME_CHARS else n[:MAX_NAME_CHARS] + "...") for n in names[:MAX_NAMES_SHOWN])
    more = len(names) - MAX_NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _wrong_names(row: dict, columns: tuple[str, ...], where: str) -> BadRequest:
    known = set(columns)
    missing = [c for c in columns if c not in row]
    unknown = [k for k in row if k not in known]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} field{'s' * (len(missing) != 1)}: {_quote(missing)}")
    if unknown:
        parts.append(f"unknown {len(unknown)} field{'s' * (len(unknown) != 1)}: {_quote(unknown)}")
    return BadRequest(f"{where}: {'; '.join(parts)} (the model's {len(columns)} columns are named in its signature)")


# JSON value types (as the parser gives them) a column of each numpy kind takes.
_ALLOWED = {"f": frozenset((int, float)), "i": frozenset((int,)), "u": frozenset((int,)), "b": frozenset((bool,))}
_KIND_WORDS = {"f": "numbers", "i": "integers", "u": "integers", "b": "true or false"}


def _bad_values(row: dict, columns: tuple[str, ...], spec: TensorSpec, where: str) -> str:
    """The message naming the fields whose values are not of the input's kind."""
    allowed = _ALLOWED[spec.dtype.kind]
    bad = [c for c in columns if type(row[c]) not in allowed]
    got = sorted({_json_type(row[c]) for c in bad})
    return f"{where}: {_quote(bad)} must be {_KIND_WORDS[spec.dtype.kind]} ({spec.datatype}), got {', '.join(got)}"


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__
