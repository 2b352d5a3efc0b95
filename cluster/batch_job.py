"""Entry point of a modelweave batch job submitted to a Ray cluster.

    ray job submit --working-dir . -- \
        python cluster/batch_job.py examples/demo.yaml --input s3://bucket/in/ --output s3://bucket/out/

It takes the same arguments as ``modelweave batch`` (see ``--help``). Inside a Ray job
it joins the job's cluster (``RAY_ADDRESS``, else ``auto``) instead of starting an
embedded one; pass ``--address`` to override.
"""

from __future__ import annotations

import os
import pathlib
import sys


def main(argv: list[str]) -> None:
    """Runs ``modelweave batch`` with ``argv``, joining the surrounding Ray cluster."""
    root = str(pathlib.Path(__file__).resolve().parents[1])
    if root not in sys.path:  # a --working-dir upload of the repository, without pip install
        sys.path.insert(0, root)
    from modelweave.cli import main as cli

    args = list(argv)
    if "--help" not in args and not any(a == "--address" or a.startswith("--address=") for a in args):
        args += ["--address", os.environ.get("RAY_ADDRESS") or "auto"]
    cli(["batch", *args], prog_name="batch_job.py")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(sys.argv[1:])
