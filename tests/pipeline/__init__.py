"""Tests of the whole pipeline: run folders written from traces, streaming, shards, Ray, Slurm and the quickstart end to end."""
