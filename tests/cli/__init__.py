"""Tests of the command line: `curate run` as a user runs it, and progress outside a terminal."""
