"""The stacks of private servers the fault suite's fixtures (conftest.py) yield."""

from __future__ import annotations

from dataclasses import dataclass

from instances import MariaDBInstance, PostgresInstance, RabbitMQInstance, RedisInstance

__all__ = ["RabbitMaria", "RedisPostgres"]


@dataclass
class RedisPostgres:
    redis: RedisInstance
    pg: PostgresInstance
    store_url: str

    @property
    def broker_url(self) -> str:
        return self.redis.url()


@dataclass
class RabbitMaria:
    rabbit: RabbitMQInstance
    maria: MariaDBInstance
    store_url: str

    @property
    def broker_url(self) -> str:
        return self.rabbit.url()
