"""Benchmarks: ``make bench`` runs ``python -m bench``.

Each prints ratios against references measured in the same run.
"""
