"""Rebuilds the committed triage cluster configs from the graphs (one step, never hand-edited).

``cluster/serve-triage.yaml`` is ``modelweave build examples/triage.yaml
examples/triage-baseline.yaml --insecure``; ``cluster/serve-triage-laptop.yaml`` the same with
``--profile laptop`` (CPU asks scaled to fit a 2-CPU machine); ``cluster/rayservice-triage.yaml`` embeds the
same config as ``spec.serveConfigV2`` and keeps the rest of the manifest as it is.
``tests/e2e/test_cli.py`` fails when either is stale.

    python scripts/build_cluster_configs.py
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
SERVE = REPO / "cluster" / "serve-triage.yaml"
SERVICE = REPO / "cluster" / "rayservice-triage.yaml"
LAPTOP = REPO / "cluster" / "serve-triage-laptop.yaml"


def main() -> None:
    subprocess.run([sys.executable, "-m", "modelweave.cli", "build", "examples/triage.yaml",
                    "examples/triage-baseline.yaml", "-o", str(SERVE), "--insecure"], cwd=REPO, check=True)
    subprocess.run([sys.executable, "-m", "modelweave.cli", "build", "examples/triage.yaml",
                    "examples/triage-baseline.yaml", "-o", str(LAPTOP), "--insecure", "--profile", "laptop"],
                   cwd=REPO, check=True)
    text = SERVICE.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    service = yaml.safe_load(text)
    service["spec"]["serveConfigV2"] = SERVE.read_text()
    SERVICE.write_text(header + yaml.safe_dump(service, sort_keys=False, width=120))


if __name__ == "__main__":
    main()
