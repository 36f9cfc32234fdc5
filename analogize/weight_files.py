"""Where an ONNX model keeps its weights, read off the file's protobuf wire format: the files of its external
weights (:func:`external_weight_files`: the commands that must not write over those files ask before any work, and
a full parse of the model, every weight copied out, took as long as loading it, for a model the command then loads
again), and how many bytes each initializer stores in the file (:func:`initializer_data_sizes`: protobuf copies a
weight's bytes out just to say how many there are).

Only the messages on the way to a tensor are entered (the model's graph, its initializers and nodes, their
attributes' tensors and graphs, at any depth: the tensors onnx loads external data for); every other field,
weights included, is stepped over by its length. Untrusted bytes: every length is checked against the bytes
around it, and a file that is no well-formed model gives no files (its loader then says what is wrong)."""
from __future__ import annotations

import mmap
from pathlib import Path

_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_NAME, _TENSOR_RAW_DATA = 7, 5, 8, 9
# (message kind, field number) -> the kind of message that field holds, for the fields on the way to a tensor
_ENTERED = {("model", _MODEL_GRAPH): "graph",
            ("graph", 1): "node", ("graph", _GRAPH_INITIALIZER): "tensor",
            ("node", 5): "attribute",
            ("attribute", 5): "tensor", ("attribute", 6): "graph", ("attribute", 10): "graph",
            ("attribute", 11): "tensor"}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def external_weight_files(path) -> list[Path]:
    """The files the ONNX model at ``path`` keeps external weights in, beside it (none when it is no readable
    model)."""
    if path is None or not Path(path).is_file():
        return []
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            locations = _external_locations(data)
    except (OSError, ValueError):  # unreadable, empty, or not the wire format of a model
        return []
    return sorted({Path(path).parent / location for location in locations})


def initializer_data_sizes(data) -> list[tuple[bytes, int]] | None:
    """(name, bytes of ``raw_data``: 0 where it has none) of each initializer of the model's graph, in the order
    protobuf parses them from ``data``, the model file's bytes (fields read as protobuf merges them: graphs given
    twice add their initializers, a field given twice in a tensor keeps its last value, a field of another wire
    type is left as unknown); None where the bytes are no well-formed model."""
    sizes = []
    try:
        for number, wire, _, (graph_start, graph_end) in _fields(data, 0, len(data)):
            if number != _MODEL_GRAPH or wire != _LENGTH:
                continue
            for field, field_wire, _, (start, end) in _fields(data, graph_start, graph_end):
                if field == _GRAPH_INITIALIZER and field_wire == _LENGTH:
                    sizes.append(_name_and_data_size(data, start, end))
    except ValueError:
        return None
    return sizes


def _name_and_data_size(data, start: int, end: int) -> tuple[bytes, int]:
    name, size = b"", 0
    for number, wire, _, (field_start, field_end) in _fields(data, start, end):
        if wire == _LENGTH and number == _TENSOR_NAME:
            name = bytes(data[field_start:field_end])
        elif wire == _LENGTH and number == _TENSOR_RAW_DATA:
            size = field_end - field_start
    return name, size


def _external_locations(data) -> set[str]:
    locations, pending = set(), [("model", 0, len(data))]
    while pending:  # a loop, not recursion: the nesting of graphs is the file's to choose
        kind, start, end = pending.pop()
        if kind == "tensor":
            location = _external_location(data, start, end)
            if location:
                locations.add(location)
            continue
        for number, wire, _, (field_start, field_end) in _fields(data, start, end):
            inner = _ENTERED.get((kind, number))
            if inner is not None and wire == _LENGTH:
                pending.append((inner, field_start, field_end))
    return locations


def _external_location(data, start: int, end: int) -> str | None:
    """The location of a tensor's external data, or None if its data is in the file."""
    external, location = False, None
    for number, wire, value, (field_start, field_end) in _fields(data, start, end):
        if number == _TENSOR_DATA_LOCATION and wire == _VARINT:
            external = value == _EXTERNAL
        elif number == _TENSOR_EXTERNAL_DATA and wire == _LENGTH:
            entry = {entry_number: bytes(data[entry_start:entry_end])
                     for entry_number, entry_wire, _, (entry_start, entry_end) in _fields(data, field_start, field_end)
                     if entry_wire == _LENGTH}
            if entry.get(_ENTRY_KEY) == b"location":
                location = entry.get(_ENTRY_VALUE, b"").decode("utf-8", "replace")
    return location if external else None


def _fields(data, start: int, end: int):
    """(number, wire type, varint value or None, (start, end) of a length-delimited value) of each field of the
    message in ``data[start:end]``; ValueError where the bytes are no message."""
    position = start
    while position < end:
        key, position = _varint(data, position, end)
        number, wire = key >> 3, key & 7
        value, span = None, (position, position)
        if wire == _VARINT:
            value, position = _varint(data, position, end)
        elif wire == _LENGTH:
            length, position = _varint(data, position, end)
            span, position = (position, position + length), position + length
        elif wire in (_FIXED64, _FIXED32):
            position += 8 if wire == _FIXED64 else 4
        else:  # groups (deprecated, never in ONNX) and invalid types
            raise ValueError(f"wire type {wire}")
        if position > end:
            raise ValueError("a field runs past its message")
        yield number, wire, value, span


def _varint(data, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= end or shift > 63:
            raise ValueError("a varint runs past its message")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position += 1
        if not byte & 0x80:
            return value, position
        shift += 7
