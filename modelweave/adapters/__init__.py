"""Model adapters: plain classes (no Ray) that wrap one model each."""

from modelweave.adapters.base import CallableAdapter, ModelAdapter, build_adapter, resolve_adapter

__all__ = ["CallableAdapter", "ModelAdapter", "build_adapter", "resolve_adapter"]
