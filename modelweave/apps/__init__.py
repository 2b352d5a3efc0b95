"""Reference applications built on modelweave (models, data preparation, evaluation)."""
