"""Flow control: concurrency keys, throttle, rate limit, debounce, batching,
priority, idempotency and singleton (Inngest's semantics)."""

from .config import Batch, Concurrency, Debounce, Priority, RateLimit, Singleton, Throttle
from .plan import SHARED, Admission, FlowControl, KeyUnavailable

__all__ = [
    "SHARED",
    "Admission",
    "Batch",
    "Concurrency",
    "Debounce",
    "FlowControl",
    "KeyUnavailable",
    "Priority",
    "RateLimit",
    "Singleton",
    "Throttle",
]
