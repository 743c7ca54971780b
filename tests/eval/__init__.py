"""Tests of `curate eval` (curation/eval): ranking statistics, bootstrap intervals, run and model reports."""
