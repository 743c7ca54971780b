"""Tests of the study tasks and the shared study code (curation/eval/study.py) behind scripts/study.py and friends."""
