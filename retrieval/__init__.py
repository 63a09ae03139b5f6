"""Shared library: encoders, index artifacts, datasets, evaluation and BM25."""
