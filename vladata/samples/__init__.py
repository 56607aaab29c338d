"""Generators of small datasets laid out exactly like the real formats (for demos and tests)."""
