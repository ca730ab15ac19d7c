"""Podium benchmarks: ``make bench`` (in-process runtime) and ``make bench-serve`` (HTTP)."""
