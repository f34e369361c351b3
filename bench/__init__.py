"""Benchmarks: each figure is printed next to the limit it is compared with, measured in the same run."""
