"""Builders and fixtures shared by the tests: ``stores`` (store fixtures, a pytest plugin),
``fakes`` (batches and specs for trainer tests), ``vlm_factories``/``vlm_helpers`` (tiny VLMs),
``scripts`` (importing the benchmark scripts). Import them as ``tests.helpers.<module>``."""
