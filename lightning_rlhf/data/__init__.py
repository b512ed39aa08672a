"""Datasets, formats, collation and the built-in tasks shared by every algorithm."""

from lightning_rlhf.data.collate import RLHFCollator, tokenize_dataset
from lightning_rlhf.data.formats import DataError, parse_hh
from lightning_rlhf.data.module import RLHFDataModule

__all__ = ["DataError", "RLHFCollator", "RLHFDataModule", "parse_hh", "tokenize_dataset"]
