"""``modelweave eval``: compare graph versions on labelled data, sweep a route's threshold, or read a shadow log."""

from __future__ import annotations

import pathlib
import sys

import click

from modelweave.errors import ModelweaveError
from modelweave.serving import embedded_num_cpus


@click.command(name="eval")
@click.argument("graphs", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--data", "data_path", default=None, help="labelled dataset (.parquet, .csv, .jsonl); needed with GRAPHS")
@click.option("--shadow-log", "shadow_log", default=None, type=click.Path(dir_okay=False),
              help="instead: report agreement, errors and latency of shadow candidates from a shadow node's sink")
@click.option("--text-column", default=None, help="input column holding the text (default: derived, `text`)")
@click.option("--column", "columns", multiple=True, metavar="PART=COLUMN",
              help="map an input part to a column: Text=body, Embedding=features, Tensor[.NAME]=pixels (repeatable)")
@click.option("--message-column", default=None, help="column holding the whole input message as protobuf JSON")
@click.option("--label-column", default="label", show_default=True)
@click.option("--predicted", default="classification.label", show_default=True,
              help="envelope field compared with the label column (e.g. classification.label, metadata.KEY)")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="first N rows only")
@click.option("--runner", type=click.Choice(["batch", "local"]), default="batch", show_default=True,
              help="batch: Ray Data job (same executor as online); local: in this process")
@click.option("--ablate", is_flag=True, help="also evaluate the last graph with each removable node taken out")
@click.option("--markdown", "markdown_path", default=None, help="write the Markdown report here")
@click.option("--plot", "plot_path", default=None, help="write a quality-vs-compute PNG here (+ frontier with --sweep)")
@click.option("--json", "json_path", default=None, help="write the figures as JSON here")
@click.option("--compare-to", "compare_to", default=None, metavar="NAME",
              help="reference version (a graph's name) of the paired comparison; default: the first graph")
@click.option("--reach", "reach_of", multiple=True, metavar="NODE",
              help="model node whose share of requests gets a column (repeatable; default: up to three nodes "
                   "some but not all requests reach)")
@click.option("--num-cpus", default=None, type=click.IntRange(min=1),
              help="logical CPUs of the embedded Ray (batch runner)")
@click.option("--sweep", "sweep_text", default=None, metavar="ROUTE[@FIELD]=LO:HI:STEPS",
              help="also sweep the numeric threshold of route ROUTE in every graph that has it (two extra runs "
                   "per graph, any number of thresholds) and report quality vs the share of requests taken into "
                   "that rule's branch; --plot then draws that frontier, --json also writes FILE.sweep.json")
def eval_command(graphs: tuple[str, ...], data_path: str, text_column: str | None, columns: tuple[str, ...],
                 message_column: str | None, label_column: str, predicted: str, limit: int | None, runner: str,
                 ablate: bool, markdown_path: str | None, plot_path: str | None, json_path: str | None,
                 compare_to: str | None, reach_of: tuple[str, ...], num_cpus: int | None, sweep_text: str | None,
                 shadow_log: str | None) -> None:
    """Compare graph versions (GRAPHS, in evolution order) on one labelled dataset.

    Input columns map to each graph's input parts as in `modelweave batch`. With
    --shadow-log FILE, compare a shadow node's candidates with its primary on the real
    traffic recorded in FILE instead.
    """
    import json

    from modelweave.cli import load_checked

    if shadow_log:
        from modelweave import shadow_report

        try:
            click.echo(shadow_report.markdown(shadow_report.load(shadow_log)))
        except (OSError, UnicodeDecodeError) as exc:
            click.echo(f"error: --shadow-log {shadow_log}: {getattr(exc, 'strerror', None) or exc}", err=True)
            sys.exit(2)
        return
    if not graphs:
        raise click.UsageError("Missing argument 'GRAPHS...' (or give --shadow-log FILE).")
    if data_path is None:
        raise click.UsageError("Missing option '--data'.")

    from modelweave import eval_stats
    from modelweave import evaluate as ev
    from modelweave import sweep as sw
    from modelweave import sweep_report as sw_report
    from modelweave.batch.inputs import ColumnChoice, parse_column_flags
    from modelweave.prepare import data_dir as resolve_data_dir
    from modelweave.prepare import run_prepare_hooks
    from modelweave.v1 import messages_pb2 as pb

    checked = load_checked(graphs)
    head = predicted.split(".", 1)[0]
    if head not in pb.Message.DESCRIPTOR.fields_by_name:
        click.echo(f"error: --predicted {predicted}: {head!r} is not a field of the envelope (fields: "
                   f"{', '.join(pb.Message.DESCRIPTOR.fields_by_name)})", err=True)
        sys.exit(2)
    names = [g.spec.name for g in checked]
    if compare_to is not None and compare_to not in names:  # ablations are not references, only the graphs
        click.echo(f"error: --compare-to {compare_to}: no version named {compare_to} (versions: {', '.join(names)})",
                   err=True)
        sys.exit(2)
    models = sorted({name for g in checked for name in g.models})
    unknown = [node for node in reach_of if node not in models]
    if unknown:  # a typo would otherwise cost a whole evaluation and give a column of zeros
        click.echo(f"error: --reach {unknown[0]}: no model node named {unknown[0]} (model nodes: "
                   f"{', '.join(models)})", err=True)
        sys.exit(2)
    try:
        request = sw.request_for(sweep_text, [g.spec for g in checked]) if sweep_text else None
        table, truths = ev.load_table(data_path, label_column, limit)
        inputs = ev.TableInputs(table, ColumnChoice(parse_column_flags(columns), text_column, message_column))
        for graph in checked:  # every version's input columns exist before anything loads
            inputs.choice.derive(table.schema, graph)
    except (OSError, ValueError, ModelweaveError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    directory = resolve_data_dir(None)
    for graph in checked:
        run_prepare_hooks(graph.spec, directory, log=lambda m: click.echo(m, err=True))
    if runner == "batch":
        import ray

        if not ray.is_initialized():  # in-process callers (tests) may bring their own Ray
            ray.init(address="local", num_cpus=embedded_num_cpus(num_cpus), include_dashboard=False,
                     log_to_driver=False, namespace="modelweave")
    click.echo(f"evaluating {len(checked)} version(s) on {table.num_rows} rows ({runner} runner)", err=True)
    reports = ev.evaluate([(g.spec.name, g.spec) for g in checked], inputs, truths, runner=runner, ablate=ablate,
                          label_field=predicted)
    sweeps = (sw.run_sweeps([(g.spec.name, g.spec) for g in checked], request, inputs, truths, runner=runner,
                            label_field=predicted, log=lambda m: click.echo(m, err=True)) if request else [])
    paired = ev.paired_comparisons(reports, compare_to)
    sections = [ev.markdown(reports, reach_of=list(reach_of) or ev.reach_nodes(reports)),
                ev.comparisons(reports, compare_to, paired),
                ev.contributions(reports), sw_report.markdown(sweeps) if sweeps else ""]
    text = "\n".join(section for section in sections if section)
    click.echo(text)
    if markdown_path:
        pathlib.Path(markdown_path).write_text(text, encoding="utf-8")
    if plot_path:
        sw_report.plot(sweeps, reports, plot_path) if sweeps else ev.plot(reports, plot_path)
    if json_path:
        pathlib.Path(json_path).write_text(json.dumps([ev.as_dict(r) for r in reports], indent=2))
        sw_report.write_json(sweeps, json_path)
        eval_stats.write_json(paired[0], json_path)
