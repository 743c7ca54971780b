"""Tests of the parse stage: answers read from traces, and thinking split from the answer."""
