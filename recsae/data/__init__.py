"""Datasets: typed interaction logs, loaders (named datasets and any CSV/TSV/Parquet log), leave-one-out split, synthetic planted concepts."""

from recsae.data.core import Dataset, FeatureTable, Split, has_time, leave_one_out, split_description
from recsae.data.features import rating_threshold
from recsae.data.fetch import KNOWN_SHA256, fetch_movielens
from recsae.data.formats import load_ml1m, load_ml100k, load_movielens_latest, load_rechorus
from recsae.data.loaders import (
    DATASET_NAMES,
    default_data_dir,
    kcore_filter,
    load_dataset,
)
from recsae.data.logfile import ItemFile, load_csv
from recsae.data.synthetic import Concept, PlantedTruth, make_synthetic

__all__ = [
    "DATASET_NAMES",
    "KNOWN_SHA256",
    "Concept",
    "Dataset",
    "FeatureTable",
    "ItemFile",
    "PlantedTruth",
    "Split",
    "default_data_dir",
    "fetch_movielens",
    "has_time",
    "kcore_filter",
    "leave_one_out",
    "load_csv",
    "load_dataset",
    "load_ml100k",
    "load_ml1m",
    "load_movielens_latest",
    "load_rechorus",
    "make_synthetic",
    "rating_threshold",
    "split_description",
]
