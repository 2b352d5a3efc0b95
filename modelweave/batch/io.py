"""Readers and writers of batch jobs: parquet, CSV and JSON lines, local or remote.

A path may be a file, a folder or a glob (``data/*.parquet``, ``s3://bucket/in/**/*.csv``),
on any filesystem pyarrow resolves (local paths, ``file://``, ``s3://``, ``gs://``,
``hdfs://`` ...). The format comes from the extension (compression suffixes such as
``.gz`` are skipped), from the files inside a folder, or from an explicit ``fmt``.
Everything stays lazy: reading returns a ``ray.data.Dataset``; writing streams blocks
to files as the job produces them (Ray Data writes a folder of part files).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

from modelweave.batch.job import configure_context
from modelweave.errors import InvalidArgument

FORMATS = ("parquet", "csv", "json")

_EXTENSIONS = {"parquet": "parquet", "pq": "parquet", "csv": "csv", "json": "json",
               "jsonl": "json", "ndjson": "json"}
_COMPRESSION = {"gz", "bz2", "zst", "br", "lz4", "snappy"}
_GLOB_CHARS = "*?["

#: File extensions Ray Data reads per format when reading a folder detected by extension.
_READ_EXTENSIONS = {
    "parquet": ["parquet", "pq"],
    "csv": ["csv", *(f"csv.{c}" for c in sorted(_COMPRESSION))],
    "json": [f"{e}{s}" for e in ("json", "jsonl", "ndjson") for s in ("", *(f".{c}" for c in sorted(_COMPRESSION)))],
}


def normalise_format(fmt: str) -> str:
    """Maps a user's format name (``jsonl``, ``ndjson``, ``pq`` ...) to parquet / csv / json.

    Raises:
        InvalidArgument: an unknown format.
    """
    key = fmt.lower().lstrip(".")
    if key not in _EXTENSIONS:
        raise InvalidArgument(f"unknown format {fmt!r}; use one of parquet, csv, json (JSON lines)")
    return _EXTENSIONS[key]


def format_of(path: str) -> str | None:
    """Format implied by a file name's extension, ignoring a compression suffix."""
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    parts = name.split(".")[1:]
    while parts and parts[-1] in _COMPRESSION:
        parts.pop()
    return _EXTENSIONS.get(parts[-1]) if parts else None


def _resolve(path: str) -> tuple[Any, str]:
    """The pyarrow filesystem of ``path`` and the path inside it."""
    import os

    from pyarrow import fs

    if "://" in path:
        try:
            return fs.FileSystem.from_uri(path)
        except Exception as exc:
            raise InvalidArgument(f"cannot open {path!r}: {exc}") from None
    return fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def _visible(inner: str) -> bool:
    return not any(p.startswith((".", "_")) for p in inner.rstrip("/").rsplit("/", 1)[-1:])


def expand_glob(path: str) -> tuple[Any, list[str]]:
    """Files matching a glob pattern (``*``, ``?``, ``[...]``; ``**`` spans folders).

    Raises:
        InvalidArgument: nothing matches.
    """
    from pyarrow import fs

    filesystem, inner = _resolve(path)
    first = min(inner.index(c) for c in _GLOB_CHARS if c in inner)
    base = inner[:first].rsplit("/", 1)[0] or "/"
    recursive = "/" in inner[first:] or "**" in inner
    infos = filesystem.get_file_info(fs.FileSelector(base, recursive=recursive, allow_not_found=True))
    files = sorted(i.path for i in infos if i.type == fs.FileType.File and fnmatch.fnmatchcase(i.path, inner)
                   and _visible(i.path))
    if not files:
        raise InvalidArgument(f"no files match {path!r}")
    return filesystem, files


def _folder_format(filesystem: Any, inner: str, path: str) -> str:
    from pyarrow import fs

    for info in filesystem.get_file_info(fs.FileSelector(inner, recursive=True)):
        if info.type == fs.FileType.File and _visible(info.path):
            found = format_of(info.path)
            if found:
                return found
    raise InvalidArgument(f"cannot tell the format of the files in {path!r}; pass a format (--format)")


def read_input(path: str, fmt: str | None = None, *, num_cpus: float | None = None,
               text_columns: Sequence[str] = ()) -> Any:
    """Lazily reads a file, folder or glob of parquet / CSV / JSON lines into a dataset.

    Args:
        path: Local path or URI; a file, a folder or a glob.
        fmt: ``parquet``, ``csv`` or ``json`` (JSON lines); default: from the extension(s).
        num_cpus: CPUs per read task (Ray Data's default when None).
        text_columns: CSV columns read as strings, whatever they look like: Arrow infers a
            column of digits as numbers, and ``007`` would reach the model as ``7``.

    Raises:
        InvalidArgument: missing path, no matching files, or an unknown format.
    """
    import ray
    from pyarrow import fs

    extensions: list[str] | None = None
    if any(c in path for c in _GLOB_CHARS):
        filesystem, paths = expand_glob(path)
        chosen = normalise_format(fmt) if fmt else format_of(paths[0])
        target: str | list[str] = paths
    else:
        filesystem, inner = _resolve(path)
        info = filesystem.get_file_info(inner)
        if info.type == fs.FileType.NotFound:
            raise InvalidArgument(f"input {path!r} does not exist")
        if info.type == fs.FileType.Directory:
            chosen = normalise_format(fmt) if fmt else _folder_format(filesystem, inner, path)
            extensions = None if fmt else _READ_EXTENSIONS[chosen]
        else:
            chosen = normalise_format(fmt) if fmt else format_of(inner)
        target = inner
    if chosen is None:
        raise InvalidArgument(f"cannot tell the format of {path!r} from its name; pass a format (--format)")
    kwargs: dict[str, Any] = {"filesystem": filesystem}
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    if chosen == "parquet":
        ds = _read_parquet(target, file_extensions=extensions, **kwargs)
    elif chosen == "csv":
        if text_columns:
            import pyarrow as pa
            import pyarrow.csv as pacsv

            kwargs["convert_options"] = pacsv.ConvertOptions(column_types={c: pa.string() for c in text_columns})
        ds = ray.data.read_csv(target, file_extensions=extensions, **kwargs)
    else:
        if extensions:
            kwargs["file_extensions"] = extensions
        ds = ray.data.read_json(target, **kwargs)  # Arrow's reader: newline-delimited JSON
    configure_context(ds.context)
    return ds


def _read_parquet(target: str | list[str], **kwargs: Any) -> Any:
    """``ray.data.read_parquet`` through Ray Data's first (V1) parquet datasource.

    Why: 2.60's default (V2) reader lists files by starting a pool of footer-reader actors
    for every read (32 by default), then kills them; on 2 cores reading four small files took
    3.5-8.8 s that way and 0.3-0.5 s through V1 (which also made two blocks per file, so
    several graph stages start at once). V1 fetches footers in parallel tasks once there are
    many files. Only this call changes: the context's setting is restored afterwards.
    """
    import ray

    context = ray.data.DataContext.get_current()
    previous = context.use_datasource_v2
    context.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(target, **kwargs)
    finally:
        context.use_datasource_v2 = previous


def output_exists(path: str) -> bool:
    """True when ``path`` names an existing file or a non-empty folder."""
    from pyarrow import fs

    filesystem, inner = _resolve(path)
    info = filesystem.get_file_info(inner)
    if info.type == fs.FileType.Directory:
        return bool(filesystem.get_file_info(fs.FileSelector(inner, recursive=False)))
    return info.type != fs.FileType.NotFound


def write_output(dataset: Any, path: str, fmt: str | None = None, *, overwrite: bool = False) -> None:
    """Streams ``dataset`` to a folder of parquet / CSV / JSON-lines part files at ``path``.

    Args:
        dataset: The (lazy) result dataset; writing executes it.
        path: Output folder (local path or URI); ``out.parquet`` is a folder named so.
        fmt: Output format; default: from ``path``'s extension.
        overwrite: Replace an existing output instead of refusing.

    Raises:
        InvalidArgument: unknown format, or the output exists and ``overwrite`` is False.
    """
    from ray.data import SaveMode

    chosen = normalise_format(fmt) if fmt else format_of(path)
    if chosen is None:
        raise InvalidArgument(f"cannot tell the output format from {path!r}; pass a format (--output-format)")
    if not overwrite and output_exists(path):
        raise InvalidArgument(f"output {path!r} already exists; remove it or pass --overwrite")
    filesystem, inner = _resolve(path)
    mode = SaveMode.OVERWRITE if overwrite else SaveMode.APPEND
    configure_context(dataset.context)
    if chosen == "parquet":
        dataset.write_parquet(inner, filesystem=filesystem, mode=mode)
    elif chosen == "csv":
        dataset.write_csv(inner, filesystem=filesystem, mode=mode)
    else:
        dataset.write_json(inner, filesystem=filesystem, mode=mode)
