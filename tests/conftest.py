"""Shared pytest configuration. Keep each concern in its own section."""

# --- Real services: reachability (skip locally / fail with CI=true), isolated resources ---
# tests/services.py documents the fixtures; importing them here makes them global.
from services import (  # noqa: F401
    mariadb_store_url,
    postgres_store_url,
    private_redis_lifetime,
    rabbitmq_broker,
    redis_broker_url,
    sqlite_store_url,
    stack,
    store_url,
)
