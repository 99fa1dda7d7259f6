"""Benchmark scripts: they print ratios, so numbers compare across machines."""
