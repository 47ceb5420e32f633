"""Benchmarks of the running-tasks service: every figure a ratio against a baseline measured in the same run."""
