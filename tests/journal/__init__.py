"""Tests of the journal: what is committed survives, and its schema migrations."""
