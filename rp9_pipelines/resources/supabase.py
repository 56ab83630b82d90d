"""Supabase (its REST API, PostgREST) for business metrics, through `supabase-py`."""

import time
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import httpx
from postgrest import ReturnMethod
from pydantic import PrivateAttr
from supabase import Client, ClientOptions, create_client

from rp9_pipelines.resources.health import Health, probe


class SupabaseResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Writes with the service-role key (never logged; bound with `dg.EnvVar`). Upserts are
    idempotent, so a failed transport is retried a bounded number of times."""

    url: str
    service_role_key: str
    timeout_s: float = 20.0
    attempts: int = 3
    batch_size: int = 500

    _client: Client | None = PrivateAttr(default=None)

    def client(self) -> Client:
        if self._client is None:
            self._client = create_client(
                self.url,
                self.service_role_key,
                options=ClientOptions(
                    auto_refresh_token=False,
                    persist_session=False,
                    httpx_client=httpx.Client(timeout=self.timeout_s, follow_redirects=True),
                ),
            )
        return self._client

    def _retrying(self, call: Any) -> Any:
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except httpx.TransportError:
                if attempt == self.attempts:
                    raise
                time.sleep(0.5 * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def upsert(self, table: str, rows: Sequence[Mapping[str, Any]], on_conflict: str) -> int:
        """Insert or update `rows` by the unique key `on_conflict` (comma-separated columns);
        returns how many rows were written."""
        written = 0
        for start in range(0, len(rows), self.batch_size):
            batch = [dict(row) for row in rows[start : start + self.batch_size]]
            self._retrying(
                lambda batch=batch: (
                    self.client()
                    .table(table)
                    .upsert(batch, on_conflict=on_conflict, returning=ReturnMethod.minimal)
                    .execute()
                )
            )
            written += len(batch)
        return written

    def select(self, table: str, equal: Mapping[str, str]) -> list[dict[str, Any]]:
        """Rows whose columns equal the given values."""
        query = self.client().table(table).select("*")
        for column, value in equal.items():
            query = query.eq(column, value)
        answer = self._retrying(query.execute)
        return list(answer.data)

    def delete(self, table: str, equal: Mapping[str, str]) -> None:
        if not equal:
            raise ValueError("refusing to delete a whole table")
        query = self.client().table(table).delete()
        for column, value in equal.items():
            query = query.eq(column, value)
        self._retrying(query.execute)

    def ping(self) -> Health:
        def check() -> str:
            answer = httpx.get(
                f"{self.url.rstrip('/')}/rest/v1/",
                headers={
                    "apikey": self.service_role_key,
                    "Authorization": f"Bearer {self.service_role_key}",
                },
                timeout=self.timeout_s,
            )
            answer.raise_for_status()
            return f"Supabase REST at {self.url}"

        return probe("supabase", check)
