"""Rebuilds the committed triage cluster configs from the graphs (one step, never hand-edited).

``cluster/serve-triage.yaml`` is ``modelweave build examples/triage.yaml
examples/triage-baseline.yaml --insecure``; ``cluster/serve-triage-laptop.yaml`` the same with
``--profile laptop`` (CPU asks scaled to fit a 2-CPU machine); ``cluster/rayservice-triage.yaml`` embeds the
same config as ``spec.serveConfigV2`` and keeps the rest of the manifest as it is, byte for byte (its
comments included: only the ``serveConfigV2`` block is rewritten).
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
    SERVICE.write_text(with_serve_config(SERVICE.read_text(), SERVE.read_text()))


def with_serve_config(manifest: str, serve_config: str) -> str:
    """``manifest`` with its ``spec.serveConfigV2`` block replaced by ``serve_config``, the rest as it is."""
    dumped = yaml.safe_dump({"spec": {"serveConfigV2": serve_config}}, sort_keys=False, width=120)
    block = dumped.splitlines(keepends=True)[1:]  # drop "spec:"; the block is indented as in the manifest
    lines = manifest.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("  serveConfigV2:"))
    end = start + 1
    while end < len(lines) and lines[end].startswith("    "):
        end += 1
    updated = "".join(lines[:start] + block + lines[end:])
    assert yaml.safe_load(yaml.safe_load(updated)["spec"]["serveConfigV2"]) == yaml.safe_load(serve_config)
    return updated


if __name__ == "__main__":
    main()
