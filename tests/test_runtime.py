"""Process tuning (shared/runtime.py), each in a fresh interpreter so the test process is left alone."""

from __future__ import annotations

import subprocess
import sys


def test_tune_gc_freezes_start_up_and_raises_thresholds() -> None:
    code = ("import gc; from shared.runtime import tune_gc, GC_THRESHOLDS; tune_gc(); "
            "assert gc.get_threshold() == GC_THRESHOLDS, gc.get_threshold(); "
            "assert gc.get_freeze_count() > 1000, gc.get_freeze_count(); "
            "assert gc.isenabled(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_open_files_limit_is_raised_to_the_hard_limit() -> None:
    code = ("import resource; from shared.runtime import raise_open_files_limit; "
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)); "
            "now = raise_open_files_limit(); "
            "assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == now > 256, now; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
