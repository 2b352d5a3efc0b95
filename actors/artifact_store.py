"""The cluster's artifact store: ships prepared artifact sets to nodes that never ran ``prepare``.

A driver that has a prepared set (``modelweave run --address``, ``modelweave prepare
--publish``) puts its files into one named, detached actor pinned to the driver's node.
The actor keeps each file as an object it owns, so the store outlives the driver and a
replica or batch actor on any node fetches the bytes through Ray's object store
(:func:`modelweave.artifacts.ensure_artifacts` verifies them against the manifest before
anything loads them).

Meant for sets up to a few hundred MB (the triage set is 12 MB): every file lives in the
object store of the store's node for the cluster's lifetime. Larger models belong in the
image or on a shared volume / bucket (``MODELWEAVE_ARTIFACTS_URI``, see cluster/README.md).
"""

from __future__ import annotations

from typing import Any

import ray

from modelweave.errors import FailedPrecondition

STORE_NAME = "modelweave-artifacts"
NAMESPACE = "modelweave"
#: Seconds a fetch may take before the replica gives up with a clear error.
FETCH_TIMEOUT_S = 300.0


class ArtifactStore:
    """Holds artifact sets as ``{set name: {file name: ObjectRef}}``."""

    def __init__(self) -> None:
        self._sets: dict[str, dict[str, Any]] = {}

    def put(self, name: str, files: dict[str, bytes]) -> int:
        """Stores (or replaces) a set; returns its size in bytes."""
        # ray.put inside the actor makes the actor the owner: the objects live as long as
        # the store, not as long as the driver that published them.
        self._sets[name] = {file: ray.put(data) for file, data in files.items()}
        return sum(len(data) for data in files.values())

    def get(self, name: str) -> dict[str, Any] | None:
        """``{file name: ObjectRef}`` of a set, or ``None`` when it was never published."""
        return self._sets.get(name)

    def names(self) -> list[str]:
        """Names of the published sets."""
        return sorted(self._sets)


def _store(create: bool) -> Any:
    if not create:
        return ray.get_actor(STORE_NAME, namespace=NAMESPACE)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # Pinned to the publishing node (the head, for `run --address` on the head): a worker
    # node's loss must not take the store with it.
    node = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    remote: Any = ray.remote(ArtifactStore)
    return remote.options(name=STORE_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                          num_cpus=0, max_concurrency=16, scheduling_strategy=node).remote()


def publish(name: str, files: dict[str, bytes]) -> int:
    """Puts a verified set into the cluster's store (created on first use); returns its bytes."""
    return int(ray.get(_store(create=True).put.remote(name, files), timeout=FETCH_TIMEOUT_S))


def fetch(name: str) -> dict[str, bytes]:
    """The files of a published set.

    Raises:
        FailedPrecondition: when no store runs, it lacks ``name``, or the transfer fails.
    """
    try:
        store = _store(create=False)
    except ValueError:
        raise FailedPrecondition(f"no actor {STORE_NAME!r} in namespace {NAMESPACE!r} (nothing was published)") \
            from None
    try:
        refs = ray.get(store.get.remote(name), timeout=FETCH_TIMEOUT_S)
        if refs is None:
            raise FailedPrecondition(f"set {name!r} was never published (store holds {ray.get(store.names.remote())})")
        data = ray.get(list(refs.values()), timeout=FETCH_TIMEOUT_S)
    except (ray.exceptions.RayError, TimeoutError) as exc:
        raise FailedPrecondition(f"transfer from {STORE_NAME!r} failed: {type(exc).__name__}: {exc}") from None
    return dict(zip(refs.keys(), data, strict=True))
