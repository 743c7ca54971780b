"""Tests of `curate train` (curation.train)."""
