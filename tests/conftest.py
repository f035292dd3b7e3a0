"""Shared fixtures: the third-party data beside the checkout, small images, run databases."""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.databases import Database
from tests.postgres_server import SERVER_GLOB, PostgresServer, ServerUnavailable, find_bin_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the checkout; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"third-party data not found at {SHARED_DATA}")
    return SHARED_DATA


def png_bytes(size: tuple[int, int] = (32, 24), color: str = "red") -> bytes:
    """A small valid PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def png_file(tmp_path: Path) -> Path:
    """A small PNG on disk."""
    path = tmp_path / "red.png"
    path.write_bytes(png_bytes())
    return path


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the session; skipped only where none is installed.

    In CI (`CI=true`, set by .ci/run, which installs PostgreSQL) a missing server fails.
    """
    bin_dir = find_bin_dir()
    problem = f"no PostgreSQL server (initdb, pg_ctl) on PATH or in {SERVER_GLOB}"
    if bin_dir is not None:
        try:
            with PostgresServer.started(bin_dir) as server:
                yield server
                return
        except ServerUnavailable as exc:
            problem = str(exc)
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests cannot run in CI: {problem}")
    pytest.skip(problem)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A run database on each backend: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        names = (str(tmp_path / f"runs-{n}.db") for n in itertools.count())
        yield Database("sqlite", next(names), lambda: next(names))
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    created: list[str] = []

    def new() -> str:
        created.append(server.create_database())
        return server.url(created[-1])

    yield Database("postgresql", new(), new)
    for name in created:
        server.drop_database(name)
