"""Which table columns become which input parts of a graph (batch jobs and ``eval``).

A graph declares its input parts (``GraphSpec.input``). A batch row becomes an input
envelope by one of two mappings:

* per part: a string column to ``Text``, a ``list<float>`` column to ``Embedding``,
  list / tensor columns to entries of ``tensors`` (``Tensor``);
* one column holding the whole input ``Message`` as protobuf JSON (any part types).

The mapping is derived from the graph and the table schema (a column named like the
part's envelope field, else the only column of a fitting type) and overridden by
``PART=COLUMN`` pairs (``--column Embedding=features``, ``--column Tensor.image=pixels``).
Pure functions over pyarrow schemas and tables: no Ray.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from google.protobuf import json_format

from modelweave.checker import CheckedGraph
from modelweave.codecs import check_json_depth, load_json, message_from_text
from modelweave.errors import GraphSpecError, InvalidArgument
from modelweave.messages import FIELD_TO_PART, PART_FIELDS, part_name
from modelweave.v1 import messages_pb2 as pb

#: Tensor dtype by the Arrow type of a tensor column's values.
_TENSOR_DTYPES: dict[pa.DataType, tuple[pb.DType, str]] = {
    pa.float32(): (pb.DTYPE_FLOAT32, "float32"),
    pa.float64(): (pb.DTYPE_FLOAT64, "float64"),
    pa.float16(): (pb.DTYPE_FLOAT16, "float16"),
    pa.int32(): (pb.DTYPE_INT32, "int32"),
    pa.int64(): (pb.DTYPE_INT64, "int64"),
    pa.uint8(): (pb.DTYPE_UINT8, "uint8"),
    pa.bool_(): (pb.DTYPE_BOOL, "bool"),
}
#: Parts a column can hold directly; the others come only inside a message column.
_COLUMN_PARTS = ("Text", "Embedding", "Tensor")


@dataclass(frozen=True)
class InputMapping:
    """Where each input part of a row comes from.

    Attributes:
        text: Column of ``Text.content``.
        embedding: Column of ``Embedding.values``.
        tensors: ``(tensor name, column)`` pairs filling ``Message.tensors``.
        message: Column holding the whole input ``Message`` as protobuf JSON (then no
            other column is used).
    """

    text: str | None = None
    embedding: str | None = None
    tensors: tuple[tuple[str, str], ...] = ()
    message: str | None = None

    def columns(self) -> list[str]:
        """The input columns this mapping reads."""
        if self.message:
            return [self.message]
        named = [self.text, self.embedding, *(c for _, c in self.tensors)]
        return [c for c in named if c]

    def overrides(self) -> dict[str, str]:
        """The mapping as explicit ``PART=COLUMN`` pairs (derives to itself on any schema)."""
        pairs = {"Text": self.text, "Embedding": self.embedding}
        out = {k: v for k, v in pairs.items() if v}
        out.update({f"Tensor.{name}": column for name, column in self.tensors})
        return out

    def describe(self) -> str:
        """``Text<-body, Embedding<-features`` (what the CLI logs)."""
        if self.message:
            return f"Message<-{self.message} (protobuf JSON)"
        parts = [f"Text<-{self.text}"] if self.text else []
        parts += [f"Embedding<-{self.embedding}"] if self.embedding else []
        parts += [f"Tensor[{name}]<-{column}" for name, column in self.tensors]
        return ", ".join(parts)


@dataclass(frozen=True)
class ColumnChoice:
    """What the user said about input columns (flags / keyword arguments); derived per schema.

    Attributes:
        columns: ``PART=COLUMN`` overrides (``--column``).
        text_column: Shorthand for ``Text=COLUMN`` (``--text-column``).
        message_column: Column holding the whole input message as protobuf JSON.
    """

    columns: Mapping[str, str] = field(default_factory=dict)
    text_column: str | None = None
    message_column: str | None = None

    def derive(self, schema: pa.Schema, graph: CheckedGraph, *, exclude: Collection[str] = ()) -> InputMapping:
        """The mapping of ``graph``'s input parts to columns of ``schema`` (see :func:`derive_mapping`)."""
        return derive_mapping(schema, graph.spec.input, required=required_parts(graph), columns=self.columns,
                              text_column=self.text_column, message_column=self.message_column, exclude=exclude)


def required_parts(graph: CheckedGraph) -> set[str]:
    """Input parts the graph's root node reads (a row without them cannot run)."""
    return set(graph.nodes[f"{graph.spec.name}/{graph.spec.flow.name}"].reads)


def parse_column_flags(pairs: Iterable[str]) -> dict[str, str]:
    """Parses ``PART=COLUMN`` flags (``Embedding=features``, ``Tensor.image=pixels``).

    Raises:
        InvalidArgument: a pair without ``=`` or with an empty side.
    """
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, column = pair.partition("=")
        if not sep or not key.strip() or not column.strip():
            raise InvalidArgument(f"--column {pair!r}: expected PART=COLUMN, e.g. Embedding=features")
        out[key.strip()] = column.strip()
    return out


def _part_of(key: str, flag: str) -> tuple[str, str]:
    """``("Tensor", "image")`` for ``Tensor.image``; accepts field names (``embedding``) too."""
    head, _, sub = key.partition(".")
    try:
        return FIELD_TO_PART.get(head) or part_name(head), sub
    except GraphSpecError:
        raise InvalidArgument(f"{flag}: unknown part {head!r}; use Text, Embedding or Tensor[.NAME]") from None


def _is_list(dtype: pa.DataType) -> bool:
    return bool(pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype))


def _leaf(dtype: pa.DataType) -> pa.DataType:
    """The value type under any nesting of lists (and of Ray's tensor extension types)."""
    if isinstance(dtype, pa.ExtensionType):
        dtype = dtype.storage_type
    while _is_list(dtype):
        dtype = dtype.value_type
    return dtype


def _is_vector(dtype: pa.DataType) -> bool:
    """A flat list of numbers (what ``Embedding`` holds)."""
    return _is_list(dtype) and (pa.types.is_floating(dtype.value_type) or pa.types.is_integer(dtype.value_type))


def _is_tensor(dtype: pa.DataType) -> bool:
    """Lists of numbers at any depth, or a tensor extension type (Ray's, Arrow's fixed_shape_tensor)."""
    storage = dtype.storage_type if isinstance(dtype, pa.ExtensionType) else dtype
    return _is_list(storage) and _leaf(dtype) in _TENSOR_DTYPES


def _is_scalar(dtype: pa.DataType) -> bool:
    return not (_is_list(dtype) or pa.types.is_struct(dtype) or pa.types.is_null(dtype))


def _is_text(dtype: pa.DataType) -> bool:
    return bool(pa.types.is_string(dtype) or pa.types.is_large_string(dtype))


_FITS = {"Text": (_is_text, "a string"), "Embedding": (_is_vector, "a list<float>"),
         "Tensor": (_is_tensor, "a list or tensor")}


def _column(schema: pa.Schema, column: str, part: str, flag: str) -> str:
    """Checks that ``column`` exists and has a type ``part`` can come from."""
    if column not in schema.names:
        raise InvalidArgument(f"{flag}: input has no column {column!r} (columns: {', '.join(schema.names)})")
    fits, wanted = _FITS[part]
    dtype = schema.field(column).type
    # A named text column may be any scalar (CSV reads a column of digits as int64).
    scalar_text = part == "Text" and _is_scalar(dtype)
    if not fits(dtype) and not scalar_text and not pa.types.is_null(dtype):
        raise InvalidArgument(f"{flag}: column {column!r} is {dtype}; {part} needs {wanted} column")
    return column


def _only(schema: pa.Schema, part: str, taken: Collection[str]) -> str | None:
    """The column named like the part's envelope field, else the only free column of a fitting type."""
    fits, _ = _FITS[part]
    field = PART_FIELDS[part]
    if field in schema.names and field not in taken and (
            fits(schema.field(field).type) or (part == "Text" and _is_scalar(schema.field(field).type))):
        return field  # a "text" column of digits reads as numbers from CSV: still the text (read as strings)
    candidates = [f.name for f in schema if f.name not in taken and fits(f.type)]
    return candidates[0] if len(candidates) == 1 else None


def derive_mapping(schema: pa.Schema, inputs: Sequence[str], *, required: Collection[str] = (),
                   columns: Mapping[str, str] | None = None, text_column: str | None = None,
                   message_column: str | None = None, exclude: Collection[str] = ()) -> InputMapping:
    """Maps the graph's declared input parts to columns of ``schema``.

    Args:
        schema: The input table's schema.
        inputs: The graph's declared input parts (``GraphSpec.input``).
        required: Parts the graph cannot run without (its root node reads them); a
            declared part outside this set is mapped only when a column fits.
        columns: ``PART=COLUMN`` overrides (``Tensor.NAME`` names the tensor).
        text_column: Shorthand for ``columns={"Text": text_column}`` (``--text-column``).
        message_column: Column holding the whole input message as protobuf JSON.
        exclude: Columns never derived (the label column of ``eval``).

    Raises:
        InvalidArgument: a one-line message naming the flag, part or column at fault.
    """
    declared = [part_name(p) for p in inputs]
    overrides = dict(columns or {})
    flags = {key: f"--column {key}={column}" for key, column in overrides.items()}
    if text_column:
        if "Text" not in declared:
            raise InvalidArgument(f"--text-column {text_column}: the graph takes no Text input (its input: "
                                  f"{', '.join(declared)}); map columns with --column PART=COLUMN")
        if overrides.setdefault("Text", text_column) == text_column:
            flags["Text"] = f"--text-column {text_column}"
    if message_column:
        if overrides:
            raise InvalidArgument("--message-column holds the whole input message; do not combine it with "
                                  "--column / --text-column")
        if message_column not in schema.names:
            raise InvalidArgument(f"--message-column: input has no column {message_column!r} "
                                  f"(columns: {', '.join(schema.names)})")
        if not _is_text(schema.field(message_column).type):
            raise InvalidArgument(f"--message-column: column {message_column!r} is "
                                  f"{schema.field(message_column).type}; it must hold protobuf JSON strings")
        return InputMapping(message=message_column)
    chosen: dict[str, str] = {}
    tensors: list[tuple[str, str]] = []
    for key, column in overrides.items():
        flag = flags[key]
        part, sub = _part_of(key, flag)
        if part not in declared:
            raise InvalidArgument(f"{flag}: the graph takes no {part} input (its input: {', '.join(declared)})")
        if part not in _COLUMN_PARTS:
            raise InvalidArgument(f"{flag}: a {part} input cannot come from one column; pass the whole input "
                                  "message as protobuf JSON with --message-column")
        _column(schema, column, part, flag)
        if part == "Tensor":
            tensors.append((sub or column, column))
        elif sub:
            raise InvalidArgument(f"{flag}: only Tensor takes a name (Tensor.NAME=COLUMN)")
        else:
            chosen[part] = column
    taken = set(exclude) | set(chosen.values()) | {c for _, c in tensors}
    for part in declared:
        if part in chosen or (part == "Tensor" and tensors):
            continue
        found = _only(schema, part, taken) if part in _COLUMN_PARTS else None
        if found is not None:
            if part == "Tensor":
                tensors.append((found, found))
            else:
                chosen[part] = found
            taken.add(found)
        elif part in required:
            how = (f"name it with --column {part}=COLUMN" if part in _COLUMN_PARTS
                   else "pass the whole input message as protobuf JSON with --message-column")
            raise InvalidArgument(f"no input column for the graph's {part} input (columns: "
                                  f"{', '.join(schema.names)}); {how}")
    if not chosen and not tensors:
        raise InvalidArgument(f"no input column maps to the graph's input ({', '.join(declared)}); "
                              "use --column PART=COLUMN or --message-column")
    return InputMapping(text=chosen.get("Text"), embedding=chosen.get("Embedding"), tensors=tuple(tensors))


def _tensor(value: Any, dtype: pa.DataType) -> pb.Tensor:
    import numpy as np

    leaf = _leaf(dtype)
    if leaf not in _TENSOR_DTYPES:  # a later file's column typed otherwise than the first's
        raise InvalidArgument(f"holds {leaf} values, which no tensor dtype takes")
    code, np_dtype = _TENSOR_DTYPES[leaf]
    if _has_null(value):  # numpy would raise (ints) or turn it into NaN or False without a word
        raise InvalidArgument("has a null value in this row")
    try:
        array = np.asarray(value, dtype=np_dtype)
    except ValueError as exc:  # ragged nested lists
        raise InvalidArgument(f"not a rectangular tensor: {exc}") from None
    return pb.Tensor(dtype=code, shape=list(array.shape), data=array.tobytes())


def _has_null(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, list) and any(_has_null(v) for v in value)


def _message(value: Any, column: str, max_depth: int) -> pb.Message:
    if value is None:
        raise InvalidArgument(f"column {column!r} is null in this row")
    try:
        data = load_json(value, f"column {column!r} is not JSON")
    except RecursionError as exc:
        raise InvalidArgument(f"column {column!r} is not JSON: {exc}") from None
    check_json_depth(data, max_depth)
    if not isinstance(data, dict):
        raise InvalidArgument(f"column {column!r} must hold a Message as a JSON object")
    try:
        return json_format.ParseDict(data, pb.Message())
    except json_format.ParseError as exc:
        raise InvalidArgument(f"column {column!r}: not a modelweave.v1.Message: {exc}") from None


def _text_message(value: Any, column: str) -> pb.Message | InvalidArgument:
    """A text row; bytes (a CSV file that is not UTF-8 reads as binary) decode as UTF-8 or fail the row.

    Other scalars (a CSV column of digits reads as int64) become their ``str()``: ``007``
    arrives as ``7``. JSON lines and Parquet keep strings as they are.
    """
    if value is None:
        return message_from_text("")
    if isinstance(value, bytes):
        try:
            return message_from_text(value.decode("utf-8"))
        except UnicodeDecodeError as exc:
            return InvalidArgument(f"column {column!r} is not UTF-8 text in this row: {exc}")
    return message_from_text(str(value))


def _with_nulls(table: pa.Table, columns: list[str]) -> pa.Table:
    for column in columns:
        table = table.append_column(column, pa.nulls(table.num_rows))
    return table


def messages_from_table(table: pa.Table, mapping: InputMapping, *, max_json_depth: int = 32
                        ) -> list[pb.Message | InvalidArgument]:
    """One input envelope per row; a row that cannot convert gets its error instead.

    A null text becomes an empty text (the executor then names it); a null embedding or
    tensor leaves the part unset (the executor says the part is required).
    """
    n = table.num_rows
    absent = [c for c in mapping.columns() if c not in table.schema.names]
    if absent:
        # The mapping comes from the first file or block; a JSON-lines file whose rows never
        # hold a key yields blocks without that column: its values are null in these rows.
        table = _with_nulls(table, absent)
    if mapping.message:
        out: list[pb.Message | InvalidArgument] = []
        for value in table.column(mapping.message).to_pylist():
            try:
                out.append(_message(value, mapping.message, max_json_depth))
            except InvalidArgument as exc:
                out.append(exc)
        return out
    if mapping.text:
        texts = table.column(mapping.text).to_pylist()
        out = [_text_message(t, mapping.text) for t in texts]
    else:
        out = [pb.Message() for _ in range(n)]
    if mapping.embedding:
        for i, values in enumerate(table.column(mapping.embedding).to_pylist()):
            msg = out[i]
            if values is None or not isinstance(msg, pb.Message):
                continue
            if any(v is None for v in values):
                out[i] = InvalidArgument(f"column {mapping.embedding!r} has a null value in this row")
            else:
                msg.embedding.values.extend(float(v) for v in values)
    for name, column in mapping.tensors:
        dtype = table.schema.field(column).type
        if pa.types.is_null(_leaf(dtype)):  # only nulls and empty lists in this block: no tensor
            continue
        for i, value in enumerate(table.column(column).to_pylist()):
            msg = out[i]
            if value is None or not isinstance(msg, pb.Message):
                continue
            try:
                msg.tensors[name].CopyFrom(_tensor(value, dtype))
            except InvalidArgument as exc:
                out[i] = InvalidArgument(f"column {column!r}: {exc}")
    return out
