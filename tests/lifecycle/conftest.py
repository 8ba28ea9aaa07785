"""Fixtures for the lifecycle tests; the helpers are in lifecycle_helpers.py."""

from __future__ import annotations

import pytest
from lifecycle_helpers import CallLog, FakeClock, World


@pytest.fixture
def clock(monkeypatch):
    from chalicelib import clock as clock_module

    fake = FakeClock(clock_module.now())
    monkeypatch.setattr(clock_module, "now", fake)
    return fake


@pytest.fixture
def world(aws):
    return World(aws)


@pytest.fixture
def fire(api):
    """Deliver an event to a handler through chalice.test.Client; returns its outcome."""

    def deliver(handler: str, event: dict) -> str:
        return api.lambda_.invoke(handler, event).payload["outcome"]

    return deliver


@pytest.fixture
def aws_calls(aws):
    """Counts the app's AWS API calls; ``aws_calls.take()`` returns those since the last take."""
    return CallLog()
