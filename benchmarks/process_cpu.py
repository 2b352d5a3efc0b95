"""Where the CPU goes: CPU time of this run's Ray processes, grouped by role, between two snapshots.

A benchmark takes a snapshot before and after a load phase; the difference per role (Serve's
HTTP proxy, the ingress, each model replica, the graph's state actor, Serve's controller, the
rest of Ray) divided by the answered requests is the CPU each role spends per request. Only
descendants of the calling process are counted (the local Ray cluster it started), so other
jobs on the machine are not. Linux or macOS (``psutil``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Role of processes that are none of the named ones (GCS, raylet, dashboard and metrics
#: agents, Ray Data's and Serve's helper actors, idle workers).
OTHER = "Ray (GCS, raylet, agents, idle workers)"


def process_role(cmdline: str) -> str:
    """The role of one Ray process from its command line (Ray sets ``ray::<actor>`` titles).

    ``ray::ServeReplica:<app>:<deployment>[.<method>]`` is ``ingress`` for the ingress
    deployment and ``replica <deployment>`` otherwise; a model in a child process of the ingress
    (``deployment.inline: process``) is ``ingress child <node>``.
    """
    from modelweave.process_isolation import child_node

    node = child_node(cmdline.split())
    if node is not None:
        return f"ingress child {node}"
    title = cmdline.strip().split(" ", 1)[0]
    if title.startswith("ray::ServeReplica:"):
        deployment = title.removeprefix("ray::ServeReplica:").split(":", 1)[-1].split(".", 1)[0]
        return "ingress" if deployment == "Ingress" else f"replica {deployment}"
    if title.startswith("ray::ProxyActor"):
        return "HTTP proxy"
    if title.startswith("ray::GraphState"):
        return "state actor"
    if title.startswith("ray::ServeController"):
        return "Serve controller"
    return OTHER


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds (user + system) and role of each process at one moment."""

    cpu_s: Mapping[int, float]
    role: Mapping[int, str]


def ray_processes() -> list[tuple[Any, str]]:
    """Every descendant of this process (the local Ray cluster it started): ``(psutil.Process, command line)``."""
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            found.append((proc, " ".join(proc.cmdline())))
        except (psutil.Error, OSError):
            continue  # exited between the listing and the read
    return found


def snapshot() -> Snapshot:
    """CPU seconds and role of every descendant of this process."""
    import psutil

    cpu: dict[int, float] = {}
    role: dict[int, str] = {}
    for proc, cmdline in ray_processes():
        try:
            times = proc.cpu_times()
        except (psutil.Error, OSError):
            continue  # exited since the listing
        cpu[proc.pid] = times.user + times.system
        role[proc.pid] = process_role(cmdline)
    return Snapshot(cpu, role)


def cpu_by_role(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds spent per role between two snapshots, largest first.

    A process that started in between counts from zero; one that exited in between is lost
    (its last seconds cannot be read any more). Roles come from the later snapshot, because
    Ray renames a worker's title when it becomes an actor.
    """
    spent: dict[str, float] = {}
    for pid, cpu in after.cpu_s.items():
        used = cpu - before.cpu_s.get(pid, 0.0)
        if used > 0:
            role = after.role[pid]
            spent[role] = spent.get(role, 0.0) + used
    return dict(sorted(spent.items(), key=lambda kv: -kv[1]))


def per_request_ms(spent_s: Mapping[str, float], requests: int) -> dict[str, float]:
    """CPU milliseconds per answered request for each role (empty when nothing was answered)."""
    if requests <= 0:
        return {}
    return {role: round(seconds * 1000 / requests, 2) for role, seconds in spent_s.items()}
