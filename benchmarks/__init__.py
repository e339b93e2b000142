"""Benchmarks that check latentwire's bandwidth claims against classical codecs.

Not part of the installed runtime: run from a checkout (``python -m benchmarks.rd ...``).
Results (JSON + plots) land in ``benchmarks/results/``; BENCHMARKS.md quotes them.
"""
