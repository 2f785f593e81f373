"""Batch mode (``coe batch``, ``CoE.batch``): route a whole queue first, then answer it expert by
expert, so each expert loads once. ``runner`` plans and runs; ``files`` reads the input and keeps
the resumable result log."""

from coe.batch.files import BatchInputError, BatchItem, BatchResult
from coe.batch.runner import BatchObserver, BatchReport, run_batch

__all__ = ["BatchInputError", "BatchItem", "BatchObserver", "BatchReport", "BatchResult", "run_batch"]
