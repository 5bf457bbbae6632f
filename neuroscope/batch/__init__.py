"""Whole data sets: `neuroscope batch` (inputs, work, store, run, ray_engine, batched)."""
