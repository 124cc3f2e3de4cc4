"""The fuzz suite's hypothesis profiles, chosen by the TELLTALE_FUZZ environment variable.

``short`` (the default) runs in CI as part of ``make test``: each test picks a budget that keeps
the whole directory well under a minute. ``long`` (``make fuzz``) runs TELLTALE_FUZZ_EXAMPLES
cases per fuzzed target (100,000 unless set): each test runs its share of them, so that the tests
of one target (the record decoders, the policy parser) add up to at least the whole.

Both modes bound each case in time twice over: a hypothesis deadline (a case that is merely slow
fails, with its input) and `hang_guard`, a watchdog that ends the process with a traceback when
one case hangs, even inside C code.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
from collections.abc import Iterator
from datetime import timedelta

from hypothesis import HealthCheck, settings

MODE = os.environ.get("TELLTALE_FUZZ", "short")
if MODE not in ("short", "long"):
    raise RuntimeError(f"TELLTALE_FUZZ={MODE!r}: use 'short' or 'long'")
LONG = MODE == "long"
LONG_EXAMPLES = int(os.environ.get("TELLTALE_FUZZ_EXAMPLES", "100000"))
DEADLINE = timedelta(seconds=2)  # per case; cases take microseconds to milliseconds
HANG_S = 30  # per case: the watchdog ends the process beyond this

_COMMON = {
    "deadline": DEADLINE,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("telltale-fuzz-short", max_examples=100, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("telltale-fuzz-long", max_examples=LONG_EXAMPLES, **_COMMON)  # type: ignore[arg-type]


def fuzz_settings(short_examples: int, long_share: float = 1.0) -> settings:
    """The settings of one fuzz test: `short_examples` cases in short mode; in long mode
    `long_share` of the long profile's cases (rounded up)."""
    if LONG:
        profile = settings.get_profile("telltale-fuzz-long")
        return settings(profile, max_examples=-(-int(profile.max_examples * long_share * 100) // 100))
    return settings(settings.get_profile("telltale-fuzz-short"), max_examples=short_examples)


@contextlib.contextmanager
def hang_guard(seconds: float = HANG_S) -> Iterator[None]:
    """End the process, printing every thread's traceback, if the block runs longer than `seconds`.

    A hang in C (the native decoder) never returns to Python, so neither a deadline nor a signal
    handler would see it; faulthandler's watchdog thread does.
    """
    faulthandler.dump_traceback_later(seconds, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
