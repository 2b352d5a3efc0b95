"""Regenerate the Python code for protos/ into modelweave/v1/.

Usage: ``python scripts/gen_protos.py`` (write) or ``--check`` (exit 1 when the
committed generated code differs from what the .proto files produce; CI runs this).
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_PACKAGE = ROOT / "modelweave" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_root: pathlib.Path) -> list[pathlib.Path]:
    """Runs protoc over every .proto under protos/ and returns the generated files."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out_root / "modelweave" / "v1").iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(pathlib.Path(tmp))
        stale = []
        for f in files:
            target = OUT_PACKAGE / f.name
            if opts.check:
                if not target.exists() or not filecmp.cmp(f, target, shallow=False):
                    stale.append(target.name)
            else:
                shutil.copyfile(f, target)
        if opts.check:
            expected = {f.name for f in files}
            extra = [p.name for p in OUT_PACKAGE.iterdir()
                     if p.name.endswith(GENERATED_SUFFIXES) and p.name not in expected]
            if stale or extra:
                print(f"generated protobuf code is stale: {sorted(stale + extra)}; run python scripts/gen_protos.py")
                return 1
            print("generated protobuf code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
