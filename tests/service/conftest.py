"""Fixtures shared by the service's tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def probes(monkeypatch):
    """A compiled warm-up's background probes of the CPU's vector instructions, recorded, not run:
    in tests whose warm-ups compile nothing (or in an empty cache) each would build a handful of
    small libraries on a thread that outlives the test."""
    started = []
    monkeypatch.setattr("service.runner.probe_vector_isa_in_background", lambda: started.append(True))
    return started
