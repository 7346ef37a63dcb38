"""Abuse protection for callers: rate limits, concurrent-call limits and detokenize anomalies.

Rate limits and anomaly counts are kept in PostgreSQL and hold across replicas; the
concurrent-call limit is counted per replica.
"""

from vault.abuse.anomaly import AnomalyDetector, AnomalyVerdict, CallerSuspended
from vault.abuse.concurrency import ConcurrencyLimiter, TooManyConcurrentCalls
from vault.abuse.ratelimit import RateLimited, RateLimiter

__all__ = [
    "AnomalyDetector",
    "AnomalyVerdict",
    "CallerSuspended",
    "ConcurrencyLimiter",
    "RateLimited",
    "RateLimiter",
    "TooManyConcurrentCalls",
]
