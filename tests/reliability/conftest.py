"""Shared fixtures of the reliability suite: the figures every scenario reports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.figures import CACHE_KEY, Row, save


class Figures:
    """Rows added by the scenarios of this session."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, row: Row) -> None:
        row.run = os.environ.get("WXGATE_RELIABILITY_RUN", row.run)  # the soak runs parts of the suite longer
        self.rows.append(row)
        print(f"\n[reliability] {row}")


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    f = Figures()
    yield f
    if not f.rows:
        return
    target = os.environ.get("WXGATE_RELIABILITY_FIGURES")
    if target:
        save(f.rows, Path(target))
    elif (cache := getattr(request.config, "cache", None)) is not None:  # absent with -p no:cacheprovider
        cache.set(CACHE_KEY, [r.__dict__ for r in f.rows])
