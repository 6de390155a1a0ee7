"""Data: layouts, image reading, the decoded-image cache, splits, transforms and the synthetic generator."""

import warnings

from zoo.data.cache import ImageArray, load_images, report_unreadable
from zoo.data.io import ImageReadError, TruncatedImageWarning, read_grayscale, resize_pad
from zoo.data.layouts import (
    DatasetTables,
    LayoutError,
    detect_layout,
    grouping,
    load_dataset,
    read_label_csv,
    read_label_table,
    studies,
)
from zoo.data.split import fold_split, split_by_study
from zoo.data.synthetic import SyntheticSpec, ensure_synthetic

__all__ = [
    "DatasetTables", "ImageArray", "ImageReadError", "LayoutError", "SyntheticSpec", "TruncatedImageWarning",
    "detect_layout", "ensure_synthetic", "fold_split", "grouping", "load_dataset", "load_images", "read_grayscale",
    "read_label_csv", "read_label_table", "report_unreadable", "resize_pad", "split_by_study", "studies",
]


def __getattr__(name: str):
    if name == "Dataset":  # the old name (it was exported): a set of DataFrames, never a torch Dataset
        warnings.warn("zoo.data.Dataset is renamed zoo.data.DatasetTables (it holds image tables, it is not a torch "
                      "Dataset); import that name", DeprecationWarning, stacklevel=2)
        return DatasetTables
    raise AttributeError(f"module 'zoo.data' has no attribute {name!r}")
