"""Datasets, formats, collation and the built-in tasks shared by every algorithm."""
