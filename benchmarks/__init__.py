"""Benchmarks for cb-backups: each figure compares the product with the raw tool it replaces.

Run `python -m benchmarks [--size 200MB|1GB|2GB] [--quick] [--repeat N] [--json PATH]`
(or `cb-backups bench ...`). Every figure is the median of paired runs (A and B
alternate within one run, order flipped every pair) and is printed as a ratio with
its target and PASS/MISS; a miss is reported, never raised.
"""
