"""Builders that tests of several stages share: plain functions and constants, not fixtures.

A test module never imports from another test module; what two of them need lives here (or, when it
needs pytest's fixtures and only one stage uses it, in that stage folder's conftest.py).
"""
