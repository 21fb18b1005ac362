"""When a transiently failed step is tried again.

Exponential backoff with full jitter, 3 retries by default; a workflow may set
``"retry": {"max_retries": N, "base_delay_s": S, "max_delay_s": M}``. A wait
the provider asked for (429 Retry-After) does not spend the retry budget.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from config.errors import WorkflowValidationError


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    base_delay_s: float = 2.0
    max_delay_s: float = 300.0

    @classmethod
    def from_config(cls, raw: Any, field: str = "retry") -> RetryPolicy:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise WorkflowValidationError(field, "must be an object")
        values: dict[str, Any] = {}
        for key, minimum in (("max_retries", 0), ("base_delay_s", 0), ("max_delay_s", 0)):
            if key in raw:
                value = raw[key]
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value < minimum:
                    raise WorkflowValidationError(f"{field}.{key}", f"must be a number >= {minimum}")
                values[key] = int(value) if key == "max_retries" else float(value)
        unknown = set(raw) - {"max_retries", "base_delay_s", "max_delay_s"}
        if unknown:
            raise WorkflowValidationError(f"{field}.{sorted(unknown)[0]}", "unknown retry setting")
        return cls(**values)

    def delay_s(self, attempt: int, *, rng: random.Random | None = None) -> float:
        """Seconds before retry number ``attempt`` (1-based): full jitter, anywhere
        from 0 up to ``min(max_delay_s, base_delay_s * 2 ** (attempt - 1))``.

        Full jitter (AWS, "Exponential Backoff and Jitter") spreads the retries of
        many steps that failed together across the whole window, so they do not
        hit a recovering provider at the same moment. ``rng`` is for tests.
        """
        uniform = rng.uniform if rng is not None else random.uniform
        return uniform(0.0, self.ceiling_s(attempt))

    def ceiling_s(self, attempt: int) -> float:
        """The longest wait before retry number ``attempt``: doubling from the base, capped."""
        # 2.0 ** 1024 raises OverflowError; the cap is reached long before that.
        exponent = min(max(attempt - 1, 0), 1023)
        return min(self.max_delay_s, self.base_delay_s * 2.0**exponent)
