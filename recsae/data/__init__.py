"""Datasets: typed interaction logs, loaders, chronological split, synthetic planted concepts."""

from recsae.data.core import Dataset, FeatureTable, Split, leave_one_out

__all__ = ["Dataset", "FeatureTable", "Split", "leave_one_out"]
