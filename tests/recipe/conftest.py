"""Fixtures for the recipe tests: the local Hub that hf:// recipes are fetched from (tests/servers/hub_server.py).

``write_recipe`` (a recipe next to the sample CSV) comes from tests/conftest.py.
"""

from tests.servers.hub_fixtures import hub_server  # noqa: F401 - registered here as the fixture of every recipe test
