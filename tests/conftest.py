"""
Fixtures pytest finds for every test module.  (Nothing here imports the
global reactor: that would break ``pytest --reactor=asyncio``.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import _redis_tools as tools


@pytest.fixture
def server() -> Iterator[tools.RedisServer]:
    """A private redis-server that the test may kill and restart."""
    tools.need(tools.server_unavailable_reason())
    with tools.RedisServer() as running:
        yield running
