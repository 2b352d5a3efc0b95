"""Graph preparation hooks: build artifacts (training, extraction) before a graph is served.

A graph lists hooks in ``prepare:``; each is ``fn(data_dir: Path, progress: bool)`` and
must be idempotent and cached (the triage hook returns in well under a second once its
artifacts exist). A hook may return the artifact set directory it wrote (one holding a
``manifest.json`` with file hashes, see :mod:`modelweave.artifacts`): those are the sets
``modelweave run --address`` / ``prepare --publish`` ship to nodes that never ran the hook.
``modelweave prepare GRAPH`` runs them explicitly and ``modelweave run``
runs them before starting Ray, so a fresh machine needs no separate step.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

from modelweave.adapters.base import import_object
from modelweave.errors import GraphSpecError
from modelweave.spec import GraphSpec

DATA_DIR_ENV = "MODELWEAVE_DATA_DIR"


def data_dir(explicit: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """The artifact directory: ``explicit``, else ``$MODELWEAVE_DATA_DIR``, else ``~/.cache/modelweave``."""
    chosen = explicit or os.environ.get(DATA_DIR_ENV) or "~/.cache/modelweave"
    return pathlib.Path(chosen).expanduser()


def run_prepare_hooks(spec: GraphSpec, directory: pathlib.Path, *, progress: bool = True,
                      log: Callable[[str], None] = print) -> list[pathlib.Path]:
    """Runs every prepare hook of ``spec`` against ``directory``.

    Returns:
        The artifact set directories the hooks returned (hooks returning nothing add none).

    Raises:
        GraphSpecError: when a hook cannot be imported.
    """
    sets: list[pathlib.Path] = []
    for path in spec.prepare:
        hook = import_object(path)
        if not callable(hook):
            raise GraphSpecError(f"prepare hook {path!r} of graph {spec.name!r} is not callable")
        log(f"modelweave: preparing {spec.name!r}: {path} -> {directory}")
        produced = hook(directory, progress)
        if isinstance(produced, str | os.PathLike):
            sets.append(pathlib.Path(produced))
    return sets
