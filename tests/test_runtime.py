"""Process tuning (shared/runtime.py), each in a fresh interpreter so the test process is left alone."""

from __future__ import annotations

import subprocess
import sys


def in_fresh_interpreter(code: str) -> None:
    """Run ``code``, which prints ``ok`` when its asserts hold, in a new Python."""
    out = subprocess.run([sys.executable, "-c", code + "; print('ok')"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_tune_gc_freezes_start_up_and_raises_thresholds() -> None:
    in_fresh_interpreter("import gc; from shared.runtime import tune_gc, GC_THRESHOLDS; tune_gc(); "
                         "assert gc.get_threshold() == GC_THRESHOLDS, gc.get_threshold(); "
                         "assert gc.get_freeze_count() > 1000, gc.get_freeze_count(); "
                         "assert gc.isenabled()")


def test_open_files_limit_is_raised_to_the_hard_limit() -> None:
    in_fresh_interpreter("import resource; from shared.runtime import raise_open_files_limit; "
                         "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
                         "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)); "
                         "now = raise_open_files_limit(); "
                         "assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == now > 256, now")


def test_reconnect_backs_off_with_jitter_and_resets() -> None:
    from shared.reconnect import Reconnect

    policy = Reconnect(base=0.1, cap=1.0)
    delays = [policy.next_delay() for _ in range(8)]
    # Equal jitter: between half and all of min(cap, base * 2^n).
    for n, delay in enumerate(delays, 1):
        ceiling = min(1.0, 0.1 * 2 ** n)
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 1.0
    policy.succeeded()
    assert policy.next_delay() <= 0.2
