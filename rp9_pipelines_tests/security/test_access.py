"""Suspend and delete turn the tenant's own credentials off (its database login and its Redis
user), so code it left running anywhere cannot use them; resume turns them on again."""

from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.security.conftest import unique_slug

pytestmark = pytest.mark.stack


def can_use_database(settings: Settings, names: TenantNames, password: str) -> bool:
    url = urlsplit(settings.database_url)
    try:
        with psycopg.connect(
            host=url.hostname,
            port=url.port,
            dbname=names.db_name,
            user=names.db_role,
            password=password,
            connect_timeout=5,
        ) as connection:
            return connection.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def can_use_redis(settings: Settings, names: TenantNames, password: str) -> bool:
    url = urlsplit(settings.redis_url)
    client = redis.Redis(
        host=url.hostname or "127.0.0.1",
        port=url.port or 6379,
        username=names.redis_user,
        password=password,
        socket_timeout=5,
    )
    try:
        return client.ping() is True
    except redis.AuthenticationError:
        return False
    finally:
        client.close()


def access(settings: Settings, vault: VaultResource, tenant: dict[str, Any]) -> tuple[bool, bool]:
    names = TenantNames(tenant["slug"], tenant["tier"])
    secrets = vault.read(names.vault_path) or {}
    return (
        can_use_database(settings, names, secrets["db_password"]),
        can_use_redis(settings, names, secrets["redis_password"]),
    )


def run(api: Api, method: str, path: str) -> None:
    response = api.request(method, path, {} if method == "POST" else None)
    assert response.status_code == 202, response.text
    assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"


def test_suspend_and_delete_turn_the_tenants_credentials_off_and_resume_on(
    api: Api, settings: Settings, vault: VaultResource
) -> None:
    tenant = api.create_tenant(slug=unique_slug("acc"), name="Access Co", plan="starter")
    slug = tenant["slug"]
    assert access(settings, vault, tenant) == (True, True)
    run(api, "POST", f"/tenants/{slug}/suspend")
    assert access(settings, vault, tenant) == (False, False)
    run(api, "POST", f"/tenants/{slug}/resume")
    assert access(settings, vault, tenant) == (True, True)
    secrets = dict(vault.read(TenantNames(slug, tenant["tier"]).vault_path) or {})
    run(api, "DELETE", f"/tenants/{slug}")  # data kept: the credentials stay, turned off
    names = TenantNames(slug, tenant["tier"])
    assert not can_use_database(settings, names, secrets["db_password"])
    assert not can_use_redis(settings, names, secrets["redis_password"])
    run(api, "DELETE", f"/tenants/{slug}?purge=true")
