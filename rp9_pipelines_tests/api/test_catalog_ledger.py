"""The API's once-only ledger on the real catalog: keys claimed, kept, released and taken over
from a request that died; the key namespace apart from Stripe's and the signatures'."""

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog.api import IN_PROGRESS, KEYS, CatalogKeyStore
from rp9_pipelines.catalog.tables import idempotency_keys
from rp9_pipelines.settings import Settings, sqlalchemy_url

pytestmark = pytest.mark.stack


@pytest.fixture
def store(settings: Settings) -> Iterator[CatalogKeyStore]:
    engine = sa.create_engine(sqlalchemy_url(settings.database_url), poolclass=sa.NullPool)
    yield CatalogKeyStore(engine)
    engine.dispose()


def age(store: CatalogKeyStore, key: str, seconds: int) -> None:
    """As if the request holding `key` had started `seconds` ago."""
    with store.engine.begin() as connection:
        connection.execute(
            sa.update(idempotency_keys)
            .where(idempotency_keys.c.key == key, idempotency_keys.c.route == KEYS)
            .values(created_at=sa.func.now() - sa.text(f"interval '{seconds} seconds'"))
        )


def test_a_key_is_claimed_once_kept_and_released(store: CatalogKeyStore) -> None:
    key = f"k-{uuid.uuid4()}"
    assert store.claim(key, "fp-1") is None
    held = store.claim(key, "fp-1")
    assert held is not None
    assert (held.request_sha256, held.status_code, held.response) == ("fp-1", IN_PROGRESS, {})
    assert 0 <= held.age_s < 60
    store.keep(key, 202, {"run_id": "r"})
    done = store.claim(key, "fp-2")
    assert done is not None
    assert (done.request_sha256, done.status_code, done.response) == ("fp-1", 202, {"run_id": "r"})
    store.release(key)
    assert store.claim(key, "fp-2") is None
    store.release(key)


def test_a_key_whose_request_died_is_taken_over_by_one_request(store: CatalogKeyStore) -> None:
    key = f"k-{uuid.uuid4()}"
    assert store.claim(key, "fp") is None
    age(store, key, 200)
    held = store.claim(key, "fp")
    assert held is not None
    assert held.started_at is not None
    assert held.age_s >= 200
    assert store.take_over(key, held.started_at)
    assert not store.take_over(key, held.started_at)  # a second request does not get it too
    fresh = store.claim(key, "fp")
    assert fresh is not None
    assert fresh.age_s < 60
    store.keep(key, 202, {})
    assert fresh.started_at is not None
    assert not store.take_over(key, fresh.started_at)  # done: nothing to take over
    store.release(key)
