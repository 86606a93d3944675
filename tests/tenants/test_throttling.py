"""The API's rate limit per token (GMP_API_RATE): 429 with Retry-After, per caller, fleet-wide."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from mailproxy.env import ConfigError
from mailproxy.rates import Rate, parse_rate
from tenants.models import Tenant

pytestmark = pytest.mark.django_db

# An hour-long window: the test cannot straddle two windows by accident.
FIVE_AN_HOUR = override_settings(GMP_API_RATE="5/hour")


@FIVE_AN_HOUR
def test_the_sixth_request_in_the_window_is_429_with_retry_after(tenant_client: APIClient) -> None:
    answers = [tenant_client.get("/accounts") for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    refused = answers[-1]
    assert refused.json()["ok"] is False
    assert "throttled" in refused.json()["error"]
    assert 1 <= int(refused["Retry-After"]) <= 3600


@FIVE_AN_HOUR
def test_each_token_has_its_own_count_and_public_endpoints_none(
    tenant: Tenant, other_tenant: Tenant, client_for: Callable[[Tenant], APIClient], admin_client: APIClient
) -> None:
    first, second = client_for(tenant), client_for(other_tenant)
    assert [first.get("/accounts").status_code for _ in range(6)][-1] == 429
    assert second.get("/accounts").status_code == 200
    assert admin_client.get("/tenants").status_code == 200
    anonymous = APIClient()
    assert all(anonymous.get("/health").status_code == 200 for _ in range(10))
    # A refused token is answered 401, not counted against anyone.
    anonymous.credentials(HTTP_X_API_TOKEN="not-a-key")
    assert {anonymous.get("/accounts").status_code for _ in range(10)} == {401}


@pytest.mark.postgres
@FIVE_AN_HOUR
def test_the_count_is_shared_by_every_web_process(tenant: Tenant, client_for: Callable[[Tenant], APIClient]) -> None:
    import redis
    from django.conf import settings

    assert settings.GMP_RATE_LIMITER == "redis"
    client = client_for(tenant)
    for _ in range(5):
        assert client.get("/accounts").status_code == 200
    keys = redis.Redis.from_url(settings.REDIS_URL).keys("gmp:api-rate:*")
    assert len(keys) == 1  # one counter in Redis, seen by any other web process
    assert int(redis.Redis.from_url(settings.REDIS_URL).get(keys[0]) or 0) == 5


def test_rates_parse_and_bad_ones_name_the_variable() -> None:
    assert parse_rate("100/s") == Rate(100, 1)
    assert parse_rate("600/min") == Rate(600, 60)
    assert parse_rate("10000/hour") == Rate(10000, 3600)
    assert parse_rate("off") is None
    for bad in ("fast", "10/week", "0/s", "-1/s"):
        with pytest.raises(ConfigError, match="GMP_API_RATE"):
            parse_rate(bad)
