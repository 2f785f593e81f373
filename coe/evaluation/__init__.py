"""Offline evaluation of routers on labelled prompts: data loading, metrics, reports.

Kept out of ``import coe``: these modules import numpy (and matplotlib for plots) at call time only.
"""
