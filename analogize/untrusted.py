"""Data from outside (files, a model's metadata) read as data only: JSON parsed with one-line errors, then
checked against the schema its format declares, so that a forged or damaged document is refused in one line
before any code reads a field of it.

A schema is written as the data it describes:

- ``str``, ``bool``, ``dict``, ``list``, any other class (``torch.Tensor``); ``Integer`` (not a bool), ``Number``
  (an integer or a finite float);
- a tuple: any of its schemas (``None`` in it: null);
- ``{"key": schema, "key?": schema}``: an object with these keys (``?``: optional); other keys are let through;
- ``{str: schema}``: an object whose every value is of ``schema``; ``[schema]``: an array of ``schema`` items;
- a function: a check of its own, given the value, that returns what is wrong with it or None
  (:func:`json_data`: JSON values only).
"""
from __future__ import annotations

import json
import math
import os
import stat
from types import FunctionType

from .errors import AnalogizeError


class Integer:
    """A whole number, not a bool."""


class Number:
    """A finite number, not a bool."""


def parse_json(text, what: str, hint: str):
    """``text`` (str or bytes) as JSON; ``what`` names it in the one-line error, and ``hint`` says what to do."""
    try:
        return json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError) as error:  # bad JSON, bad UTF-8, nesting deeper than Python recurses
        reason = str(error).splitlines()[0][:100] if str(error) else type(error).__name__
        raise AnalogizeError(f"{what} is not JSON ({reason}); {hint}") from None


def _not_json(constant: str):
    raise ValueError(f"{constant} is not a JSON number")  # Python reads it, and would write it back into results


def check_regular_file(path, what: str, hint: str) -> None:
    """Refuse in one line a ``path`` that is missing, a directory or no regular file, before it is opened: a named
    pipe blocks the open until some writer comes, and a device such as /dev/zero never ends."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise AnalogizeError(f"{what} {path}: no such file; {hint}") from None
    except OSError as error:
        raise AnalogizeError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if stat.S_ISDIR(mode):
        raise AnalogizeError(f"{what} {path} is a directory; {hint}")
    if not stat.S_ISREG(mode):
        raise AnalogizeError(f"{what} {path} is not a regular file (a pipe or a device); {hint}")


def read_json(path, what: str, hint: str):
    """The JSON document in the file ``path``."""
    check_regular_file(path, what, hint)
    try:
        with open(path, "rb") as handle:
            text = handle.read()
    except OSError as error:
        raise AnalogizeError(f"cannot read {what} {path}: {error.strerror or error}") from None
    return parse_json(text, f"{what} {path}", hint)


def check(value, schema, what: str, hint: str):
    """``value`` if it is of ``schema``, else a one-line AnalogizeError naming the field; ``what`` names the
    document and ``hint`` says what to do."""
    try:
        _check(value, schema, "")
    except _Mismatch as mismatch:
        where, problem = mismatch.args
        raise AnalogizeError(f"{what}{': ' + where if where else ''} {problem}; {hint}") from None
    return value


class _Mismatch(Exception):
    """(where, what is wrong there)"""


def json_data(value) -> str | None:
    """A schema function: ``value`` must hold JSON values only (a file read by another parser, a torch checkpoint,
    can hold other objects, which compare and print in other ways)."""
    pending = [value]
    while pending:  # a loop, not recursion: the nesting is the file's to choose
        item = pending.pop()
        if isinstance(item, dict):
            if not all(isinstance(key, str) for key in item):
                return "must have strings as keys"
            pending += item.values()
        elif isinstance(item, list):
            pending += item
        elif not (item is None or isinstance(item, (str, int)) or isinstance(item, float) and math.isfinite(item)):
            return f"must hold JSON values only, found {type(item).__name__}"
    return None


def _check(value, schema, where: str) -> None:
    options = schema if isinstance(schema, tuple) else (schema,)
    schema = next((option for option in options if _is_of(value, option)), _Mismatch)
    if schema is _Mismatch:
        expected = " or ".join(_name(option) for option in options)
        shown = _shown(value) if value is None or isinstance(value, (str, int, float)) else \
            _name(value) if isinstance(value, (dict, list)) else f"a {type(value).__name__}"
        raise _Mismatch(where, f"must be {expected}, got {shown}")
    if isinstance(schema, FunctionType):
        problem = schema(value)
        if problem:
            raise _Mismatch(where, problem)
    elif isinstance(schema, list):
        for index, item in enumerate(value):
            _check(item, schema[0], f"{where}[{index}]")
    elif isinstance(schema, dict) and str in schema:
        for key, item in value.items():
            _check(item, schema[str], f"{where}.{key}" if where else str(key))
    elif isinstance(schema, dict):
        for key, item_schema in schema.items():
            name = key.rstrip("?")
            if name in value:
                _check(value[name], item_schema, f"{where}.{name}" if where else name)
            elif not key.endswith("?"):
                raise _Mismatch(f"{where}.{name}" if where else name, "is missing")


def _is_of(value, schema) -> bool:
    if schema is None:
        return value is None
    if isinstance(schema, FunctionType):
        return True
    if schema is Integer:
        return isinstance(value, int) and not isinstance(value, bool)
    if schema is Number:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(schema, (dict, list)):
        return isinstance(value, type(schema))
    return isinstance(value, schema) and (schema is bool or not isinstance(value, bool))


def _name(schema) -> str:
    if isinstance(schema, (dict, list)):
        schema = type(schema)
    names = {None: "null", Integer: "a whole number", Number: "a finite number", str: "a string",
             bool: "true or false", dict: "an object", list: "an array"}
    return names[schema] if schema in names else f"a {schema.__name__}"


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
