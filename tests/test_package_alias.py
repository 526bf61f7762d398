"""The former package name ``gateway`` is a deprecated alias of ``intentgate``, for one release."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_the_old_name_gives_the_same_modules_with_a_deprecation_warning() -> None:
    script = """
import warnings
warnings.simplefilter("error")
try:
    import gateway
    raise SystemExit("no warning")
except DeprecationWarning as exc:
    assert "intentgate" in str(exc), exc
warnings.simplefilter("ignore")
import gateway
import gateway.verify, gateway.store.tables
from gateway.verify import ActionTokenVerifier
import intentgate, intentgate.verify, intentgate.store.tables
assert gateway.verify is intentgate.verify and gateway.store.tables is intentgate.store.tables
assert ActionTokenVerifier is intentgate.verify.ActionTokenVerifier is gateway.ActionTokenVerifier
assert intentgate.verify.__spec__.name == "intentgate.verify" and not hasattr(intentgate.verify, "__path__")
assert intentgate.store.__spec__.name == "intentgate.store"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_python_m_gateway_still_runs_the_cli() -> None:
    out = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-m", "gateway", "--version"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "intentgate" in out.stdout.lower(), out.stderr
