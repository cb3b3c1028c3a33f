"""Shared test fixtures: only what many test modules need."""
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MOVIELENS_SMALL = REPO_ROOT / ".." / "shared" / "data" / "ml-latest-small"
ONLINE_RETAIL = REPO_ROOT / ".." / "shared" / "data" / "online-retail-h1"


@pytest.fixture
def movielens_dir() -> Path:
    """The real MovieLens ml-latest-small folder beside the repository; the test is skipped when it is absent."""
    path = MOVIELENS_SMALL.resolve()
    if not (path / "ratings.csv").is_file() or not (path / "movies.csv").is_file():
        pytest.skip(f"MovieLens ml-latest-small not found at {path}")
    return path


@pytest.fixture(scope="session")
def online_retail_dir() -> Path:
    """The real online-retail purchase log beside the repository; the test is skipped when it is absent."""
    path = ONLINE_RETAIL.resolve()
    if not (path / "purchases.csv.gz").is_file() or not (path / "items.csv").is_file():
        pytest.skip(f"online-retail-h1 not found at {path}")
    return path
