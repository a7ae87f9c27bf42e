"""Datasets: typed interaction logs, loaders, chronological split, synthetic planted concepts."""

from recsae.data.core import Dataset, FeatureTable, Split, leave_one_out
from recsae.data.fetch import KNOWN_SHA256, fetch_movielens
from recsae.data.loaders import (
    DATASET_NAMES,
    default_data_dir,
    kcore_filter,
    load_csv,
    load_dataset,
    load_ml1m,
    load_ml100k,
    load_movielens_latest,
    load_rechorus,
)
from recsae.data.synthetic import Concept, PlantedTruth, make_synthetic

__all__ = [
    "DATASET_NAMES",
    "KNOWN_SHA256",
    "Concept",
    "Dataset",
    "FeatureTable",
    "PlantedTruth",
    "Split",
    "default_data_dir",
    "fetch_movielens",
    "kcore_filter",
    "leave_one_out",
    "load_csv",
    "load_dataset",
    "load_ml100k",
    "load_ml1m",
    "load_movielens_latest",
    "load_rechorus",
    "make_synthetic",
]
