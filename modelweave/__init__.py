"""modelweave: multi-model AI architectures as declarative graphs on Ray."""

__version__ = "0.1.0"
