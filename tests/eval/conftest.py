"""Fixtures of these tests; the builders are in tests.builders.eval_run (shared with other folders)."""

import pytest

from tests.builders.eval_run import build_recipe, build_run


@pytest.fixture
def make_recipe():
    return build_recipe


@pytest.fixture
def make_run():
    return build_run
