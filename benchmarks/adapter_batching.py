"""Per-item CPU of each triage adapter at several batch sizes, in-process (no Ray).

This is how the ``deployment.batching`` sizes of ``examples/triage.yaml`` were chosen: a
model gets dynamic batching when its CPU per item falls with the batch size, and the
batch size stops growing where the gain flattens out (a larger batch only makes the first
request of a batch wait longer). Every adapter is built with its node's params from the
graph file and runs over the same held-out test tweets (the answer nodes over the
English ones, with the Embedding and Generation the earlier nodes would have produced).

CPU is the whole process's (``time.process_time``), so work a library spreads over its
own threads counts too; ONNX models run with the graph's ``threads: 1``. Run from the
repository root after ``modelweave prepare examples/triage.yaml``::

    python benchmarks/adapter_batching.py                   # 192 texts, sizes 1 4 8 16 32
    python benchmarks/adapter_batching.py --texts 96 --nodes redact grounding
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time
from collections.abc import Sequence

from modelweave.adapters.base import ModelAdapter, build_adapter
from modelweave.checker import check_graph
from modelweave.spec import load_graph
from modelweave.v1 import messages_pb2 as pb

REPO = pathlib.Path(__file__).resolve().parents[1]
#: One node per distinct adapter configuration of the triage graph, cheap ones first.
NODES = ["normalise", "language", "guard", "tfidf", "redact", "minilm", "embed", "retrieve", "grounding"]


def per_item_cpu_ms(adapter: ModelAdapter, messages: Sequence[pb.Message], batch_size: int,
                    repeats: int = 1) -> float:
    """CPU milliseconds per item of ``adapter.predict`` over ``messages`` in batches of ``batch_size``."""
    adapter.predict(list(messages[:batch_size]))  # warm caches (first-call allocations)
    start = time.process_time()
    for _ in range(repeats):
        for i in range(0, len(messages), batch_size):
            adapter.predict(list(messages[i:i + batch_size]))
    return (time.process_time() - start) * 1000.0 / (repeats * len(messages))


def triage_messages(n: int) -> tuple[list[pb.Message], list[pb.Message]]:
    """(every row, English rows with Embedding + Generation) built from test tweets."""
    from modelweave.apps.triage.data import tweets
    from modelweave.apps.triage.models import AnswerRetriever, LanguageId, MiniLMEmbedder, Normalizer

    norm, lang = Normalizer(), LanguageId()
    norm.load()
    lang.load()
    rows = []
    for tweet in tweets("test", limit=n):
        m = pb.Message()
        m.text.content = tweet.text
        m.text.CopyFrom(norm.predict([m])[0])
        m.text.CopyFrom(lang.predict([m])[0])
        rows.append(m)
    embedder, retriever = MiniLMEmbedder(threads=1), AnswerRetriever()
    embedder.load()
    retriever.load()
    answered = [m for m in rows if m.text.language == "en"]
    for m, vector in zip(answered, embedder.predict(answered), strict=True):
        m.embedding.CopyFrom(vector)
    for m, generation in zip(answered, retriever.predict(answered), strict=True):
        m.generation.CopyFrom(generation)
    return rows, answered


def main(argv: list[str] | None = None) -> None:
    """Prints per-item CPU ms for each node and batch size, and the gain over batch size 1."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", default=str(REPO / "examples" / "triage.yaml"))
    parser.add_argument("--texts", type=int, default=192)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--nodes", nargs="+", default=NODES)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)

    graph = check_graph(load_graph(args.graph))
    rows, answered = triage_messages(args.texts)
    print(f"{len(rows)} test tweets ({len(answered)} English with an answer); {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'node':<12}" + "".join(f"{'b=' + str(b):>9}" for b in args.sizes) + "   best gain vs b=1 (CPU ms/item)")
    for name in args.nodes:
        node = graph.models[name]
        adapter = build_adapter(node.impl, node.params)
        adapter.load()
        messages = answered if name in ("retrieve", "grounding") else rows
        cpu = [per_item_cpu_ms(adapter, messages, b, args.repeats) for b in args.sizes]
        print(f"{name:<12}" + "".join(f"{c:>9.3f}" for c in cpu) + f"   {cpu[0] / min(cpu):.2f}x")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
