"""The reference "triage" app: preprocess, guard, classify sentiment in tiers, answer and validate.

Submodules:
    data: the corpora and the one deterministic train/validation/test split.
    prepare: trains and caches every artifact (``python -m modelweave.apps.triage.prepare``).
    finetune: fine-tunes MiniLM-L6 at prepare time (torch) and exports it to int8 ONNX.
    models: the adapter classes of each triage stage.
    evaluate_models: held-out evaluation of single models and the cascade.
"""
