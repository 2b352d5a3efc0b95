"""Artifact sets reach every node: verify locally, else fetch from a shared URI or through Ray.

An *artifact set* is a directory written by a graph's ``prepare`` hook (e.g.
``~/.cache/modelweave/triage``) holding ``manifest.json`` whose ``artifacts`` maps each
file name to its SHA-256. Adapters call :func:`ensure_artifacts` before loading. When the
local copy is missing or does not match its manifest, the set is fetched, in order, from:

1. ``$MODELWEAVE_ARTIFACTS_URI/<set name>/``: a mounted path, ``file://``, or any URI
   ``pyarrow.fs`` opens (``s3://``, ``gs://``, ``hdfs://``; credentials from the usual
   environment of that filesystem);
2. the cluster's artifact store actor (:mod:`actors.artifact_store`), filled by the
   driver that prepared the set (``modelweave run --address``, ``modelweave prepare
   --publish``), when this process runs inside Ray.

A fetched copy is written to a temporary sibling, every file is checked against the
manifest's hashes, and only then renamed into place (under a lock, so replicas on one
node fetch once). When nothing works, :class:`FailedPrecondition` names the set, the bad
file, the node and every source tried.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from modelweave.errors import FailedPrecondition

#: Environment variable naming the shared location holding ``<set name>/`` directories.
ARTIFACTS_URI_ENV = "MODELWEAVE_ARTIFACTS_URI"
MANIFEST = "manifest.json"

#: A fetcher returns ``{file name: bytes}`` for a set (manifest included), or raises.
Fetcher = Callable[[str], dict[str, bytes]]

# Files already hashed in this process, keyed by (path, size, mtime): several adapters of one
# replica read the same set, and hashing large models again for each would slow start-up.
_verified: dict[tuple[str, int, int], str] = {}


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _verified[key] = h.hexdigest()
    return _verified[key]


def manifest_hashes(manifest: dict[str, Any]) -> dict[str, str]:
    """The ``artifacts`` map of a manifest (file name -> SHA-256), checked for safe names.

    Raises:
        FailedPrecondition: when the map is missing or a name could escape the directory.
    """
    hashes = manifest.get("artifacts")
    if not isinstance(hashes, dict) or not hashes:
        raise FailedPrecondition("manifest.json lists no artifacts (no 'artifacts' map of file -> sha256)")
    for name in hashes:
        if not isinstance(name, str) or name in {"", ".", ".."} or "/" in name or "\\" in name:
            raise FailedPrecondition(f"manifest.json lists an unsafe artifact name {name!r}")
    return {str(k): str(v) for k, v in hashes.items()}


def problems(directory: Path) -> list[str]:
    """What is wrong with a local artifact set; empty when every file matches its manifest."""
    path = directory / MANIFEST
    if not path.is_file():
        return [f"{MANIFEST} is missing"]
    try:
        hashes = manifest_hashes(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, FailedPrecondition) as exc:
        return [f"{MANIFEST} is unreadable: {exc}"]
    found = []
    for name, digest in sorted(hashes.items()):
        file = directory / name
        if not file.is_file():
            found.append(f"{name} is missing")
        elif _file_sha256(file) != digest:
            found.append(f"{name} does not match its sha256 in {MANIFEST}")
    return found


def verify_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """Checks fetched files against the manifest among them; returns only the listed files.

    Raises:
        FailedPrecondition: naming the first missing or corrupt artifact.
    """
    if MANIFEST not in files:
        raise FailedPrecondition(f"{MANIFEST} is missing")
    try:
        manifest = json.loads(files[MANIFEST].decode("utf-8"))
    except ValueError as exc:
        raise FailedPrecondition(f"{MANIFEST} is not JSON: {exc}") from None
    kept = {MANIFEST: files[MANIFEST]}
    for name, digest in sorted(manifest_hashes(manifest).items()):
        if name not in files:
            raise FailedPrecondition(f"artifact {name!r} is missing")
        if sha256_bytes(files[name]) != digest:
            raise FailedPrecondition(f"artifact {name!r} does not match its sha256 in {MANIFEST}")
        kept[name] = files[name]
    return kept


def read_set(directory: Path) -> dict[str, bytes]:
    """Reads a verified local set (manifest plus listed files) into memory, for publishing.

    Raises:
        FailedPrecondition: when the local set is incomplete or corrupt.
    """
    found = problems(directory)
    if found:
        raise FailedPrecondition(f"artifact set {str(directory)!r} cannot be published: {'; '.join(found)}")
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    names = [MANIFEST, *sorted(manifest_hashes(manifest))]
    return {name: (directory / name).read_bytes() for name in names}


def fetch_from_uri(base: str, name: str) -> dict[str, bytes]:
    """Reads ``<base>/<name>/manifest.json`` and the files it lists (any ``pyarrow.fs`` URI or path).

    Raises:
        FailedPrecondition: when the location or a listed file cannot be read.
    """
    import pyarrow.fs as pafs

    try:
        if "://" in base:
            fs, root = pafs.FileSystem.from_uri(base)
        else:
            fs, root = pafs.LocalFileSystem(), str(Path(base).expanduser().resolve())
        prefix = f"{root.rstrip('/')}/{name}"

        def read(file: str) -> bytes:
            with fs.open_input_stream(f"{prefix}/{file}") as stream:
                return bytes(stream.read())

        files = {MANIFEST: read(MANIFEST)}
        for file in manifest_hashes(json.loads(files[MANIFEST].decode("utf-8"))):
            files[file] = read(file)
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"cannot read {base.rstrip('/')}/{name}/: {exc}") from None
    return files


def fetch_from_ray(name: str) -> dict[str, bytes]:
    """Fetches a set from the cluster's artifact store actor (needs a running Ray worker/driver).

    Raises:
        FailedPrecondition: when no store runs or it does not hold ``name``.
    """
    from actors.artifact_store import fetch

    return fetch(name)


def node_description() -> str:
    """Host name, and the Ray node id and IP when running inside Ray (for error messages)."""
    host = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            node_id = ray.get_runtime_context().get_node_id()
            return f"{host} (Ray node {node_id[:12]}, {ray.util.get_node_ip_address()})"
    except Exception:  # noqa: BLE001 - a description must never fail the real error
        pass
    return host


def default_fetchers() -> list[tuple[str, Fetcher]]:
    """The sources tried in order: ``$MODELWEAVE_ARTIFACTS_URI``, then Ray's store (inside Ray)."""
    fetchers: list[tuple[str, Fetcher]] = []
    uri = os.environ.get(ARTIFACTS_URI_ENV, "").strip()
    if uri:
        fetchers.append((f"{ARTIFACTS_URI_ENV}={uri}", lambda name: fetch_from_uri(uri, name)))
    try:
        import ray

        if ray.is_initialized():
            fetchers.append(("the Ray artifact store", fetch_from_ray))
    except ImportError:  # pragma: no cover - ray is a dependency; plain unit tests may stub it
        pass
    return fetchers


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    import fcntl

    with (directory.parent / f".{directory.name}.fetch.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _install(directory: Path, files: dict[str, bytes]) -> None:
    """Writes verified ``files`` next to ``directory`` and swaps them in atomically."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-fetch-", dir=directory.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; replicas may run as other users
        for file, data in files.items():
            (tmp / file).write_bytes(data)
        swap_in(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_in(built: Path, directory: Path) -> None:
    """Replaces ``directory`` with the finished ``built`` one (a sibling), never leaving it half-written.

    Readers see either the old set or the new one: the old directory is moved aside first and
    deleted only after the new one is in place.
    """
    old = directory.parent / f".{directory.name}-old-{built.name}"
    if directory.exists():
        directory.rename(old)
    built.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def ensure_artifacts(directory: str | os.PathLike[str], fetchers: list[tuple[str, Fetcher]] | None = None) -> Path:
    """Makes sure the artifact set at ``directory`` is complete and verified on this node.

    Args:
        directory: The set's local directory; its name is the set's name at every source.
        fetchers: ``(description, fetch)`` sources; default :func:`default_fetchers`.

    Returns:
        ``directory``, verified against its manifest's hashes.

    Raises:
        FailedPrecondition: no valid local copy and no source delivered one; the message
            names the set, the first bad artifact, the node and every source tried.
    """
    path = Path(directory).expanduser()
    found = problems(path)
    if not found:
        return path
    name = path.name
    sources = default_fetchers() if fetchers is None else fetchers
    tried = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        found = problems(path)  # another replica on this node may have fetched it meanwhile
        if not found:
            return path
        for description, fetch in sources:
            try:
                files = verify_files(fetch(name))
            except FailedPrecondition as exc:
                tried.append(f"{description}: {exc}")
                continue
            _install(path, files)
            return path
    tried_text = "; ".join(tried) if tried else f"none configured (set {ARTIFACTS_URI_ENV} or publish the set)"
    raise FailedPrecondition(
        f"artifact set {name!r} is not usable on node {node_description()}: {found[0]} in {str(path)!r}. "
        f"Sources tried: {tried_text}. Fix: run `modelweave prepare` there, mount or copy the set to "
        f"{ARTIFACTS_URI_ENV}/{name}/, or publish it to the cluster (`modelweave prepare GRAPH --publish ADDRESS`)"
    )


def publish_set(directory: str | os.PathLike[str]) -> int:
    """Puts a verified local set into the cluster's artifact store (Ray must be initialised).

    Returns:
        The set's size in bytes.

    Raises:
        FailedPrecondition: when the local set is incomplete or corrupt.
    """
    from actors.artifact_store import publish

    path = Path(directory).expanduser()
    return publish(path.name, read_set(path))
