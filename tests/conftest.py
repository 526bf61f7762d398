"""Shared fixtures: the project's own intents and policy, real stores in tmp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.intents import IntentRegistry, load_intents

ROOT = Path(__file__).resolve().parent.parent
INTENTS_DIR = ROOT / "intents"
POLICY_DIR = ROOT / "opa"


@pytest.fixture(scope="session")
def registry() -> IntentRegistry:
    return load_intents(INTENTS_DIR)
