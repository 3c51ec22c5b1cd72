"""Benchmarks (models, training steps, the data pipeline, ingest) and FLOP counting: commands
that print numbers and write JSON, never asserts."""
