"""A real PostgreSQL for the tests.

``MM_TEST_DATABASE_URL`` names one (``.ci/run`` starts a throwaway cluster and sets it);
without it, the first test that needs one starts a throwaway cluster here
(:mod:`tools.pg_throwaway`) when PostgreSQL's server binaries are installed, and stops
it at the end of the session. Where neither works the tests that need it are skipped,
with the reason in the skip line. Each test gets a schema of its own in that database
(:func:`fresh_url`), so tests never see each other's rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ENV = "MM_TEST_DATABASE_URL"


def _server() -> Iterator[str]:
    url = os.environ.get(ENV)
    if url:
        yield url
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("PostgreSQL tests SKIPPED: psycopg is not installed")
    from tools import pg_throwaway

    try:
        url, root = pg_throwaway.start()
    except pg_throwaway.Unavailable as exc:
        pytest.skip(f"PostgreSQL tests SKIPPED: no {ENV} and no throwaway cluster: {exc}")
    try:
        yield url
    finally:
        pg_throwaway.stop(Path(root))


pg_server = pytest.fixture(scope="session")(_server)


def fresh_url(server: str) -> str:
    """``server`` with a new, empty schema as its search path."""
    from tools.pg_throwaway import fresh_schema

    return fresh_schema(server)
