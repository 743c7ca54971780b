"""Fixtures of these tests; the builders are in tests.builders.train_run (shared with other folders)."""

from pathlib import Path

import pytest

from tests.builders.train_run import IdentityBackend, build_run_folder, train_target, write_train_recipe


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    return build_run_folder(tmp_path_factory.mktemp("train"), limit=8)


@pytest.fixture(name="write_train_recipe", scope="session")
def write_train_recipe_fixture():
    return write_train_recipe


@pytest.fixture(name="build_run_folder", scope="session")
def build_run_folder_fixture():
    return build_run_folder


@pytest.fixture(name="train_target", scope="session")
def train_target_fixture():
    return train_target


@pytest.fixture(name="identity_backend", scope="session")
def identity_backend_fixture():
    return IdentityBackend
