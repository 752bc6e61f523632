"""Fixtures every test module shares."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch thread for the whole run: the test models are tiny, so a second thread only
    adds synchronisation (and on a CPU shared with other jobs a descheduled thread stalls every
    op), and CPU kernels are run-to-run deterministic at a fixed thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
