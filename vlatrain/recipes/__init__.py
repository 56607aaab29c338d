"""Recipes: flat functions that wire the components (``train.run``, ``evaluate.evaluate_checkpoint``)."""
