"""Helpers shared by the tests (no fixtures: those live in conftest.py)."""
