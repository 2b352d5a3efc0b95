"""Batch inference: any graph as a streaming Ray Data job, with the online executor's semantics.

Public API: :func:`run_batch` / :class:`BatchJob` (Python, lazy datasets),
:func:`read_input` / :func:`write_output` (parquet, CSV, JSON lines), and
:func:`run_job` (file to file, what ``modelweave batch`` runs).
"""

from modelweave.batch.io import read_input, write_output
from modelweave.batch.job import BatchJob, BatchSummary, run_batch
from modelweave.batch.runner import JobOptions, run_job

__all__ = ["BatchJob", "BatchSummary", "JobOptions", "read_input", "run_batch", "run_job", "write_output"]
