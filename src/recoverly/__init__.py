"""recoverly: error recovery for Python services and ML pipelines.

Retry with backoff, circuit breakers, fallbacks, timeouts, bulkheads, rate limits,
transactions and batch processing, for sync and ``async`` code, with no
dependency. Database, training, Celery, Redis and metrics integrations are
optional extras.

.. versionadded:: 0.1
"""

import typing as _typing

from recoverly import chaos as chaos
from recoverly import config as config
from recoverly import events as events
from recoverly import registry as registry
from recoverly.backoff import RetryStrategy as RetryStrategy
from recoverly.batch import BatchProgress as BatchProgress
from recoverly.batch import abatch_with_retry as abatch_with_retry
from recoverly.batch import batch_with_retry as batch_with_retry
from recoverly.budget import RetryBudget as RetryBudget
from recoverly.budget import RetryBudgetStatistics as RetryBudgetStatistics
from recoverly.bulkhead import Bulkhead as Bulkhead
from recoverly.bulkhead import BulkheadStatistics as BulkheadStatistics
from recoverly.circuit_breaker import CircuitBreaker as CircuitBreaker
from recoverly.circuit_breaker import CircuitBreakerStatistics as CircuitBreakerStatistics
from recoverly.config import breaker as breaker
from recoverly.config import bulkhead_policy as bulkhead_policy
from recoverly.config import chaos_policy as chaos_policy
from recoverly.config import configure as configure
from recoverly.config import hedge_policy as hedge_policy
from recoverly.config import pipeline as pipeline
from recoverly.config import rate_limiter as rate_limiter
from recoverly.config import retry_budget as retry_budget
from recoverly.config import retry_policy as retry_policy
from recoverly.config import throttle_policy as throttle_policy
from recoverly.config import timeout_policy as timeout_policy
from recoverly.errors import BulkheadFullError as BulkheadFullError
from recoverly.errors import CircuitBreakerError as CircuitBreakerError
from recoverly.errors import CircuitState as CircuitState
from recoverly.errors import RateLimitExceeded as RateLimitExceeded
from recoverly.errors import RecoverlyError as RecoverlyError
from recoverly.errors import RejectedError as RejectedError
from recoverly.errors import ThrottledError as ThrottledError
from recoverly.errors import TimeoutExceeded as TimeoutExceeded
from recoverly.fallback import Fallback as Fallback
from recoverly.fallback import FallbackStatistics as FallbackStatistics
from recoverly.fallback import fallback as fallback
from recoverly.hedge import Hedge as Hedge
from recoverly.hedge import HedgeStatistics as HedgeStatistics
from recoverly.hedge import hedge as hedge
from recoverly.pipeline import Pipeline as Pipeline
from recoverly.rate_limit import RateLimiter as RateLimiter
from recoverly.rate_limit import RateLimiterStatistics as RateLimiterStatistics
from recoverly.registry import breakers as breakers
from recoverly.registry import bulkheads as bulkheads
from recoverly.registry import limiters as limiters
from recoverly.retry import Retry as Retry
from recoverly.retry import RetryStatistics as RetryStatistics
from recoverly.retry import retry as retry
from recoverly.retrying import Attempt as Attempt
from recoverly.retrying import Retrying as Retrying
from recoverly.retrying import retrying as retrying
from recoverly.safe import asafe_execute as asafe_execute
from recoverly.safe import safe_execute as safe_execute
from recoverly.throttle import AdaptiveThrottle as AdaptiveThrottle
from recoverly.throttle import AdaptiveThrottleStatistics as AdaptiveThrottleStatistics
from recoverly.timeout import Timeout as Timeout
from recoverly.timeout import TimeoutStatistics as TimeoutStatistics
from recoverly.timeout import timeout as timeout
from recoverly.transaction import TransactionManager as TransactionManager
from recoverly.transaction import TransactionStatistics as TransactionStatistics

if _typing.TYPE_CHECKING:
    __version__: str

__all__ = [
    "AdaptiveThrottle",
    "AdaptiveThrottleStatistics",
    "Attempt",
    "BatchProgress",
    "Bulkhead",
    "BulkheadFullError",
    "BulkheadStatistics",
    "CircuitBreaker",
    "CircuitBreakerError",
    "CircuitBreakerStatistics",
    "CircuitState",
    "Fallback",
    "FallbackStatistics",
    "Hedge",
    "HedgeStatistics",
    "Pipeline",
    "RateLimitExceeded",
    "RateLimiter",
    "RateLimiterStatistics",
    "RecoverlyError",
    "RejectedError",
    "Retry",
    "RetryBudget",
    "RetryBudgetStatistics",
    "RetryStatistics",
    "RetryStrategy",
    "Retrying",
    "ThrottledError",
    "Timeout",
    "TimeoutExceeded",
    "TimeoutStatistics",
    "TransactionManager",
    "TransactionStatistics",
    "abatch_with_retry",
    "asafe_execute",
    "batch_with_retry",
    "breaker",
    "breakers",
    "bulkhead_policy",
    "bulkheads",
    "chaos",
    "chaos_policy",
    "config",
    "configure",
    "events",
    "fallback",
    "hedge",
    "hedge_policy",
    "limiters",
    "pipeline",
    "rate_limiter",
    "registry",
    "retry",
    "retry_budget",
    "retry_policy",
    "retrying",
    "safe_execute",
    "throttle_policy",
    "timeout",
    "timeout_policy",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            return version("recoverly")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            return "0.0.0"
    msg = f"module 'recoverly' has no attribute {name!r}"
    raise AttributeError(msg)
