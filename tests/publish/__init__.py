"""Tests of publishing: the push to the Hub, the local Hub server itself, and the trace viewer."""
