"""Flow control: concurrency keys, throttle, rate limit, debounce, batching,
priority, idempotency and singleton (Inngest's semantics)."""

from .config import Batch, Concurrency, Debounce, Priority, RateLimit, Singleton, Throttle
from .controls import ADMISSION_CONTROLS, Admitted, Control, Ledger
from .plan import OPTIONS, SHARED, Admission, FlowControl, KeyUnavailable

__all__ = [
    "ADMISSION_CONTROLS",
    "OPTIONS",
    "SHARED",
    "Admission",
    "Admitted",
    "Batch",
    "Concurrency",
    "Control",
    "Debounce",
    "FlowControl",
    "KeyUnavailable",
    "Ledger",
    "Priority",
    "RateLimit",
    "Singleton",
    "Throttle",
]
