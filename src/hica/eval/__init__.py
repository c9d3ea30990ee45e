"""Evaluation: metrics and the benchmark protocol."""
