"""The dependency audit's verdicts, from pip-audit reports: a known vulnerability fails it, an
accepted one does not, and a report in which nothing could be looked up is a loud skip, never a pass."""

from __future__ import annotations

import json
import subprocess

import pytest

from . import audit_dependencies


def report(*dependencies: dict) -> str:
    return json.dumps({"dependencies": list(dependencies), "fixes": []})


def run_with(monkeypatch: pytest.MonkeyPatch, stdout: str, accepted: str = "") -> int:
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout, ""))
    monkeypatch.setattr(audit_dependencies, "ignored",
                        lambda: {line.split("#")[0].strip() for line in accepted.splitlines() if line.split("#")[0].strip()})
    return audit_dependencies.main()


VULNERABLE = {"name": "requests", "version": "2.19.0",
              "vulns": [{"id": "PYSEC-2018-28", "fix_versions": ["2.20.0"]}]}
CLEAN = {"name": "msgspec", "version": "0.19.0", "vulns": []}
UNKNOWN = {"name": "aiohttp", "skip_reason": "Dependency not found on PyPI and could not be audited: aiohttp (3.14.5)"}


def test_a_known_vulnerability_fails(monkeypatch, capsys):
    assert run_with(monkeypatch, report(CLEAN, VULNERABLE)) == 1
    assert "requests 2.19.0: PYSEC-2018-28 (fixed in 2.20.0)" in capsys.readouterr().out


def test_an_accepted_advisory_passes(monkeypatch, capsys):
    assert run_with(monkeypatch, report(CLEAN, VULNERABLE), "PYSEC-2018-28  # only the CLI uses it") == 0
    assert "passed: 2 packages" in capsys.readouterr().out


def test_no_data_at_all_is_a_loud_skip_not_a_pass(monkeypatch, capsys):
    assert run_with(monkeypatch, report(UNKNOWN, UNKNOWN)) == 0
    out = capsys.readouterr().out
    assert out.startswith("dependency audit SKIPPED") and "passed" not in out


def test_some_unknown_packages_are_named_beside_the_pass(monkeypatch, capsys):
    assert run_with(monkeypatch, report(CLEAN, UNKNOWN)) == 0
    assert "1 could not be looked up" in capsys.readouterr().out


def test_no_report_fails(monkeypatch):
    assert run_with(monkeypatch, "not json") == 1
