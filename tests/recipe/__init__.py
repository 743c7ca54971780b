"""Tests of recipes: validation, loading, overrides, hf:// sharing, hostile input (curation.recipe)."""
