"""Tests of the generate stage: the runner, each backend, the scorer and the critic, against in-process protocol servers and real ones."""
