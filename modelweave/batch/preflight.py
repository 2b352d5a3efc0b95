"""Checks of a file-to-file batch job that need no Ray: input, schema, columns, output.

A job that cannot succeed should say so in one line before Ray starts, not after the
pools loaded and Ray Data failed inside a worker (an input column named ``label`` used
to cost ~25 s and a stack trace). The schema is read with pyarrow from the first file
of the input (a parquet footer, the first block of a CSV or JSON-lines file), never the
whole data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from modelweave.batch.inputs import ColumnChoice, InputMapping
from modelweave.batch.io import _GLOB_CHARS, _resolve, _visible, expand_glob, format_of, normalise_format
from modelweave.batch.rows import check_result_columns
from modelweave.checker import CheckedGraph
from modelweave.errors import InvalidArgument

if TYPE_CHECKING:
    from modelweave.batch.runner import JobOptions


@dataclass(frozen=True)
class Preflight:
    """What the checks found out.

    Attributes:
        schema: Schema of the input's first file.
        input_format: ``parquet``, ``csv`` or ``json``.
        output_format: Format the output will be written in.
        mapping: Input columns per input part of the graph.
    """

    schema: pa.Schema
    input_format: str
    output_format: str
    mapping: InputMapping


def _first_file(path: str, fmt: str | None) -> tuple[Any, str, str, str]:
    """The filesystem, first data file, its name in messages and format of a file, folder or glob input.

    Raises:
        InvalidArgument: the input does not exist, holds no data file, or its format is unknown.
    """
    from pyarrow import fs

    if any(c in path for c in _GLOB_CHARS):
        filesystem, files = expand_glob(path)
    else:
        filesystem, inner = _resolve(path)
        try:
            info = filesystem.get_file_info(inner)
        except OSError as exc:
            raise InvalidArgument(f"input {path!r} cannot be read: {exc}") from None
        if info.type == fs.FileType.NotFound:
            raise InvalidArgument(f"input {path!r} does not exist")
        if info.type == fs.FileType.Directory:
            try:
                infos = filesystem.get_file_info(fs.FileSelector(inner, recursive=True))
            except OSError as exc:
                raise InvalidArgument(f"input folder {path!r} cannot be listed: {exc}") from None
            wanted = normalise_format(fmt) if fmt else None
            files = sorted(i.path for i in infos if i.type == fs.FileType.File and _visible(i.path)
                           and format_of(i.path) is not None and (wanted is None or format_of(i.path) == wanted))
            if not files:
                raise InvalidArgument(f"input folder {path!r} holds no parquet, CSV or JSON-lines files")
        else:
            files = [inner]
    chosen = normalise_format(fmt) if fmt else format_of(files[0])
    if chosen is None:
        raise InvalidArgument(f"cannot tell the format of {path!r} from its name; pass a format (--format)")
    where = path if files[0] == _inner_of(path) else f"{files[0]} (in {path})"
    return filesystem, files[0], where, chosen


def _inner_of(path: str) -> str:
    """``path`` as its filesystem names it (absolute for local paths)."""
    return str(_resolve(path)[1])


def read_schema(path: str, fmt: str | None = None) -> tuple[pa.Schema, str]:
    """The schema and format of a file, folder or glob input, read from its first file only.

    Raises:
        InvalidArgument: the input is missing, unreadable or not in the format.
    """
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    filesystem, first, where, chosen = _first_file(path, fmt)
    try:
        if chosen == "parquet":
            with filesystem.open_input_file(first) as f:
                return pq.read_schema(f), chosen
        # Compression is detected from the extension; only the first block is parsed.
        with filesystem.open_input_stream(first) as stream:
            reader = pacsv.open_csv(stream) if chosen == "csv" else pajson.open_json(stream)
            return reader.schema, chosen
    except PermissionError as exc:
        raise InvalidArgument(f"input {where!r} is not readable: {exc.strerror or exc}") from None
    except (OSError, pa.ArrowInvalid) as exc:
        # ArrowInvalid (a ValueError) and ArrowIOError: not this format, or an empty file.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidArgument(f"input {where!r} is not readable as {chosen}: {reason}") from None


def check_output(path: str, fmt: str | None = None, *, overwrite: bool = False) -> str:
    """Checks that the output can be written; returns its format (default parquet).

    An existing output is refused unless ``overwrite``. For local paths the nearest
    existing folder must be writable; remote outputs are only checked for existence
    (permission there shows only on the first write).

    Raises:
        InvalidArgument: unknown format, the output exists, is a file, or is not writable.
    """
    from pyarrow import fs

    from modelweave.batch.io import output_exists

    chosen = normalise_format(fmt) if fmt else (format_of(path) or "parquet")
    if not overwrite and output_exists(path):
        raise InvalidArgument(f"output {path!r} already exists; remove it or pass --overwrite")
    filesystem, inner = _resolve(path)
    if filesystem.get_file_info(inner).type == fs.FileType.File:
        raise InvalidArgument(f"output {path!r} is a file; the output is a folder of part files")
    if isinstance(filesystem, fs.LocalFileSystem):
        ancestor = inner
        while not os.path.exists(ancestor):
            ancestor = os.path.dirname(ancestor)
        if not os.path.isdir(ancestor):
            raise InvalidArgument(f"output {path!r} cannot be created: {ancestor!r} is a file")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise InvalidArgument(f"output {path!r} is not writable: no write permission on {ancestor!r}")
    return chosen


def preflight(graph: CheckedGraph, options: JobOptions) -> Preflight:
    """Every check of a file-to-file job that needs no Ray, in the order a user fixes them.

    Raises:
        InvalidArgument: a one-line message naming the path, column or flag at fault.
    """
    schema, in_fmt = read_schema(options.input_path, options.fmt)
    out_fmt = check_output(options.output_path, options.output_format, overwrite=options.overwrite)
    mapping = ColumnChoice(options.columns, options.text_column, options.message_column).derive(schema, graph)
    check_result_columns(schema.names, prefix=options.prefix, include_trace=options.include_trace)
    return Preflight(schema=schema, input_format=in_fmt, output_format=out_fmt, mapping=mapping)
