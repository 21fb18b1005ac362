"""Fixtures the integration modules share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from actors.workflows_cache import WorkflowCache


@pytest.fixture
async def cache(db_url: str) -> AsyncIterator[WorkflowCache]:
    """The worker's workflow cache, whose listening connection is closed afterwards."""
    workflows = WorkflowCache(db_url)
    yield workflows
    if workflows._listener is not None:  # the cache has no close of its own
        await workflows._listener.close()
