"""Tests of the source stage: reading questions from files, PerturbQA and traces made elsewhere."""
