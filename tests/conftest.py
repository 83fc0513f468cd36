"""Shared fixtures: the real infrastructure and a running stack."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.infra import Infra, provide_infra
from tests.support.stack import Stack


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with provide_infra() as found:
        yield found


@pytest.fixture(scope="session")
async def stack(infra: Infra) -> AsyncIterator[Stack]:
    """One stack shared by the tests that do not change its configuration."""
    s = await Stack(infra).start()
    yield s
    await s.stop()
