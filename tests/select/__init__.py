"""Tests of the select stage: which questions are kept, and adaptive sampling that keeps the same ones for fewer samples."""
