"""How exactly a ``split`` node delivers its weights: random and sticky, over 1,000 requests each.

Runs the real executor and split node in-process (the same code the Serve ingress runs)
over a two-branch graph with constant-label models, and prints one table: target share,
observed share, the deviation in binomial standard deviations, and for the sticky split
whether every user stayed on one branch across repeats. Run from the repository root::

    python benchmarks/split_shares.py [--requests 1000] [--weights 90,10]
"""

from __future__ import annotations

import argparse
import asyncio
import math
from typing import Any

from modelweave.checker import check_graph
from modelweave.executor import Executor
from modelweave.local import LocalCaller
from modelweave.spec import parse_graph
from modelweave.v1 import messages_pb2 as pb


def _graph(weights: tuple[float, float], sticky: str | None) -> dict[str, Any]:
    def constant(name: str) -> dict[str, Any]:
        return {"kind": "model", "name": name, "impl": "modelweave.examples.rules:ConstantLabel",
                "params": {"label": name}}

    split: dict[str, Any] = {"kind": "split", "name": "ab", "weights": {"current": weights[0], "candidate": weights[1]},
                             "branches": {"current": constant("current"), "candidate": constant("candidate")}}
    if sticky:
        split["sticky"] = sticky
    return {"name": "splitbench", "flow": split}


async def _run(weights: tuple[float, float], sticky: bool, n: int, repeats: int) -> tuple[float, bool]:
    graph = check_graph(parse_graph(_graph(weights, "metadata.user" if sticky else None)))
    ex = Executor(graph, LocalCaller(graph))
    seen: dict[int, str] = {}
    consistent = True
    for _ in range(repeats):
        for i in range(n):
            msg = pb.Message(text=pb.Text(content=f"request {i}"), metadata={"user": f"user-{i}"} if sticky else {})
            label = (await ex.run(msg)).message.classification.label
            consistent &= seen.setdefault(i, label) == label
    share = sum(1 for v in seen.values() if v == "candidate") / n
    return share, consistent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--weights", default="90,10", help="current,candidate")
    args = parser.parse_args()
    w = tuple(float(x) for x in args.weights.split(","))
    assert len(w) == 2
    target = w[1] / (w[0] + w[1])
    sd = math.sqrt(target * (1 - target) / args.requests)
    print(f"split {w[0]:g}/{w[1]:g}, {args.requests} requests (users), binomial sd {sd:.2%}")
    print("| mode | target candidate share | observed | deviation | same branch per user |")
    print("| --- | --- | --- | --- | --- |")
    for sticky in (False, True):
        share, consistent = asyncio.run(_run((w[0], w[1]), sticky, args.requests, 3 if sticky else 1))
        mode = "sticky by metadata.user (3 requests per user)" if sticky else "random"
        stays = ("yes" if consistent else "NO") if sticky else "-"
        print(f"| {mode} | {target:.1%} | {share:.1%} | {(share - target) / sd:+.1f} sd | {stays} |")


if __name__ == "__main__":
    main()
