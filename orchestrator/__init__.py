"""Orchestration around :mod:`jiio_core`: data, training tasks, Ray Tune sweeps, Parquet results."""

__all__: list[str] = []
