"""Dagster code location for xmc: thin asset wiring around `xmc_core` (see `definitions.py`)."""
