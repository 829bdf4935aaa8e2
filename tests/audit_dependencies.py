"""Audits the installed dependencies for known vulnerabilities with pip-audit (PyPI's advisory data).

Fails (exit 1) on any known vulnerability not listed in ``tests/audit-ignore.txt`` (one advisory id
per line, each with its reason after a ``#``). pip-audit passes, with a warning only, over packages
it could not look up; that would make an audit with no data look green, so this says so loudly
instead: when no package at all could be looked up (no route to the advisory data from this
machine), the audit is reported as SKIPPED, naming why, and is not counted as a pass.

    python tests/audit_dependencies.py        # from tests/run.sh, with the project's venv
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

IGNORE_FILE = Path(__file__).with_name("audit-ignore.txt")
# pip-audit asks PyPI once per package; a machine without a route to it fails each at once.
AUDIT_TIMEOUT_S = 600


def ignored() -> set[str]:
    ids = set()
    for line in IGNORE_FILE.read_text().splitlines() if IGNORE_FILE.exists() else []:
        advisory = line.split("#", 1)[0].strip()
        if advisory:
            ids.add(advisory)
    return ids


def main() -> int:
    try:
        run = subprocess.run([sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off",
                              "--skip-editable"], capture_output=True, text=True, timeout=AUDIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"dependency audit SKIPPED: pip-audit did not finish in {AUDIT_TIMEOUT_S} s")
        return 0
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        print(f"dependency audit FAILED: pip-audit gave no report (exit {run.returncode}):\n{run.stderr[-2000:]}")
        return 1
    dependencies = report.get("dependencies", [])
    audited = [d for d in dependencies if "skip_reason" not in d]
    if dependencies and not audited:
        reason = dependencies[0]["skip_reason"]
        print(f"dependency audit SKIPPED: none of {len(dependencies)} packages could be looked up "
              f"(no advisory data reachable from this machine; e.g. {reason!r})")
        return 0
    accepted = ignored()
    found = [(d["name"], d["version"], v["id"], v.get("fix_versions", []))
             for d in audited for v in d.get("vulns", []) if v["id"] not in accepted]
    skipped = len(dependencies) - len(audited)
    if found:
        print("dependency audit FAILED: known vulnerabilities:")
        for name, version, advisory, fixes in found:
            print(f"  {name} {version}: {advisory} (fixed in {', '.join(fixes) or 'no release yet'})")
        return 1
    print(f"dependency audit passed: {len(audited)} packages, no known vulnerabilities"
          + (f" ({skipped} could not be looked up)" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
