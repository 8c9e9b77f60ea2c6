"""Benchmarks that compare pdauto's delivery path with the raw HTTP client.

Run them with `python -m bench.run`; docs/benchmarks.md describes each measurement.
"""
