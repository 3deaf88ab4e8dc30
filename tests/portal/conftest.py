"""Fixtures for the web app: an app over the test database, and a client with a key."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from portal.api import create_app
from portal.apikeys import hash_api_key, new_api_key
from tests.conftest import Database

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@dataclass
class Api:
    app: FastAPI
    client: TestClient
    key: str
    db: Database

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def api(db: Database) -> Iterator[Api]:
    key = new_api_key()
    other = hash_api_key(new_api_key())  # a second configured key: every hash is compared
    app = create_app(db.sessions, [other, hash_api_key(key)], clock=lambda: NOW)
    with TestClient(app) as client:
        yield Api(app, client, key, db)
