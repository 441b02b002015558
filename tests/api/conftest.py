"""API test fixtures live in api_support.py (importable by the tests for their helpers)."""

from api_support import api, shared_api, sim  # noqa: F401
