"""Benchmarks, run as `fitloop bench NAME`. Each prints its figures next to a baseline timed in the same process."""
