from __future__ import annotations

import pytest

from hpcsera_client import Client, RetryPolicy
from tests.client.scripted import Scripted


class Sleeps(list):
    """Stands in for time.sleep: records each pause instead of taking it."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def scripted():
    server = Scripted()
    yield server
    server.close()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(scripted, sleeps) -> Client:
    return Client(
        scripted.url,
        "hpcsera_test_secret",
        user="alice",
        sleep=sleeps,
        retry=RetryPolicy(attempts=4),
    )
