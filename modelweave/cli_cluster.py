"""CLI glue for clusters: the fit check (`build` / `run`), the profiles, publishing artifacts."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from modelweave.fit import LAPTOP_CPUS, NodeCapacity, check_fit, graph_asks, laptop_factor, nodes_from_ray, scale_cpus
from modelweave.layout import every_model_in_the_ingress
from modelweave.spec import GraphSpec, dump_graph, parse_graph

PROFILES = ("default", "laptop", "replicated", "isolated")


class _FiniteCpus(click.FloatRange):
    """``> 0`` and finite: click's FloatRange lets ``nan`` and ``inf`` through."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of CPUs", param, ctx)
        return number


FINITE_CPUS = _FiniteCpus(min=0, min_open=True)


def fit_options(target: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Adds ``--profile`` and ``--force`` to a command; with ``target``, also ``--num-cpus`` / ``--address``."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.option("--force", is_flag=True,
                               help="deploy even when the fit check says the graphs cannot fit")(command)
        command = click.option("--profile", type=click.Choice(PROFILES), default="default", show_default=True,
                               help="laptop: scale every CPU ask so the graphs (at autoscaling maxima) fit "
                                    f"--num-cpus, default {LAPTOP_CPUS:g}; replicated: every model inside the "
                                    "ingress, one ingress replica per core of this machine (with --direct-ingress "
                                    "the fastest layout measured on one CPU machine); isolated: every model inside "
                                    "the ingress, those the file gives a deployment of their own in child processes "
                                    "of it (deployment.inline: process): no Serve hop, heavy models still fault-"
                                    "isolated")(command)
        if target:
            command = click.option("--address", default=None,
                                   help="check the fit against the live Ray cluster at this address")(command)
            command = click.option("--num-cpus", default=None, type=FINITE_CPUS,
                                   help="check the fit against one machine with this many logical CPUs")(command)
        return command

    return decorate


def apply_profile(specs: Sequence[GraphSpec], profile: str, num_cpus: float | None,
                  echo: bool = False) -> tuple[list[GraphSpec], str]:
    """Specs for ``profile`` and a one-line note of what it changed ("" when nothing); ``echo`` prints it."""
    if profile in ("replicated", "isolated"):
        replicas = (os.cpu_count() or 1) if profile == "replicated" else None
        isolate = profile == "isolated"
        out = [parse_graph(every_model_in_the_ingress(dump_graph(spec), replicas, isolate=isolate), spec.name)
               for spec in specs]
        note = (f"profile replicated: every model inside the ingress, {replicas} ingress replica(s)" if not isolate
                else "profile isolated: every model inside the ingress, the heavy ones in child processes of it")
        if echo:
            click.echo(f"modelweave: {note}", err=True)
        return out, note
    if profile != "laptop":
        return list(specs), ""
    cpus = num_cpus or LAPTOP_CPUS
    factor = laptop_factor(graph_asks(specs), cpus)
    scaled, note = list(specs), f"profile laptop: the graphs already fit {cpus:g} CPUs; asks unchanged"
    if factor < 1.0:
        scaled = scale_cpus(specs, factor)
        note = f"profile laptop: CPU asks scaled by {factor:.3f} to fit {cpus:g} CPUs"
    if echo:
        click.echo(f"modelweave: {note}", err=True)
    return scaled, note


def live_nodes(address: str) -> list[NodeCapacity]:
    """The alive nodes of the cluster at ``address`` (joins it briefly as a driver)."""
    import ray

    ray.init(address=address, log_to_driver=False, include_dashboard=False)
    try:
        return nodes_from_ray(ray.nodes())
    finally:
        ray.shutdown()


def enforce_fit(specs: Sequence[GraphSpec], nodes: Sequence[NodeCapacity], target: str, force: bool) -> None:
    """Prints the fit report to stderr; exits 2 when the minimum needs cannot fit (unless ``force``).

    ``target`` is a cluster address, or a phrase naming the target ("a 2-CPU machine").
    """
    if ":" in target and " " not in target:
        target = f"the cluster at {target}"
    report = check_fit(graph_asks(specs), nodes, target)
    click.echo(f"modelweave: {report.summary}", err=True)
    for warning in report.warnings:
        click.echo(f"modelweave: warning: {warning}", err=True)
    for error in report.errors:
        click.echo(f"{'warning (--force)' if force else 'error'}: {error}", err=True)
    if report.errors and not force:
        click.echo("error: the graphs do not fit; change what is named above, or pass --force", err=True)
        sys.exit(2)


def check_build_fit(specs: Sequence[GraphSpec], *, num_cpus: float | None, address: str | None, profile: str,
                    force: bool) -> None:
    """``build``'s check: against ``--address``, else ``--num-cpus`` (or the laptop size), else a summary only."""
    if address:
        enforce_fit(specs, live_nodes(address), address, force)
    elif num_cpus or profile == "laptop":
        cpus = num_cpus or LAPTOP_CPUS
        enforce_fit(specs, [NodeCapacity(cpus=cpus)], f"a {cpus:g}-CPU machine", force)
    else:
        summary = check_fit(graph_asks(specs), [], "").summary.split(";")[0]
        click.echo(f"modelweave: {summary} (pass --num-cpus or --address to check the fit)", err=True)


def publish_sets(address: str, sets: Sequence[Path]) -> None:
    """Puts prepared artifact sets into the artifact store of the cluster at ``address``."""
    import ray

    from modelweave.artifacts import publish_set

    # The store actor is detached: it keeps the sets after this driver exits.
    ray.init(address=address, log_to_driver=False)
    try:
        for path in sets:
            click.echo(f"published: {path.name} ({publish_set(path) / 1e6:.1f} MB) to {address}")
    finally:
        ray.shutdown()
