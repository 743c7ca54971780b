"""Tests of the score stage: uncertainty metrics, their similarity models, LM-Polygraph parity and deepconf."""
