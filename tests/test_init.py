"""``intentgate init``: a working project from the examples, run from the checkout (the installed
wheel does the same in ``test_wheel.py``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from intentgate.config import load_config
from intentgate.errors import ConfigError
from intentgate.project import CONFIG_NAME, examples, init_project, project_files, render_config
from tests.conftest import ROOT


def intentgate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "INTENTGATE_CONFIG"}
    return subprocess.run([sys.executable, "-m", "intentgate", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**env, "COLUMNS": "200"})


def test_init_copies_every_intent_fixture_and_policy_file(tmp_path: Path) -> None:
    written = init_project(tmp_path / "proj")
    names = sorted(p.relative_to(tmp_path / "proj").as_posix() for p in written)
    source = examples()
    expected = sorted([CONFIG_NAME, *(f"intents/{p.name}" for p in source.intents_dir.glob("*.yaml")),
                       *(f"opa/{p.relative_to(source.policy_dir).as_posix()}" for p in source.policy_dir.rglob("*")
                         if p.is_file() and p.suffix in (".rego", ".json"))])
    assert names == expected
    assert "opa/intentgate/decision_test.rego" in names and "intents/refund-order.test.yaml" in names
    for name, content in project_files().items():
        assert (tmp_path / "proj" / name).read_bytes() == content


def test_the_config_it_writes_loads_with_the_embedded_defaults(tmp_path: Path) -> None:
    init_project(tmp_path)
    cfg = load_config(tmp_path / CONFIG_NAME)
    assert cfg.intents_dir == tmp_path / "intents" and cfg.policy_dir == tmp_path / "opa"
    assert cfg.data_dir == tmp_path / "var" and cfg.database_url.startswith("sqlite:///")
    assert cfg.policy.engine == "embedded" and cfg.identity.dev_issuer
    assert [u.name for u in cfg.upstreams] == ["tickets", "orders", "payments", "email", "secrets"]


def _keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{prefix}{key}"
            if key not in ("env", "headers"):  # an upstream's own variables and headers, not config keys
                yield from _keys(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for item in node:
            yield from _keys(item, prefix)


def test_every_key_of_the_config_it_writes_is_in_the_readmes_config_section(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Configuration"):]
    section = section[:section.index("\n## ", 1)]
    document = yaml.safe_load(render_config(tmp_path))
    missing = sorted({k for k in _keys(document) if not re.search(rf"\b{re.escape(k.rsplit('.', 1)[-1])}:", section)})
    assert missing == []


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    (tmp_path / "intents").mkdir()
    (tmp_path / "intents" / "refund-order.yaml").write_text("mine\n")
    with pytest.raises(ConfigError, match=r"would overwrite intents/refund-order\.yaml \(--force"):
        init_project(tmp_path)
    assert not (tmp_path / CONFIG_NAME).exists()  # nothing written when anything would be overwritten
    init_project(tmp_path, force=True)
    assert (tmp_path / "intents" / "refund-order.yaml").read_text() != "mine\n"


def test_init_command_prints_what_it_wrote_and_what_to_run_next(tmp_path: Path) -> None:
    out = intentgate("init", "proj", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"wrote 20 files in {tmp_path / 'proj'}" in out.stdout
    assert "  intentgate.yaml\n" in out.stdout and "  opa/intentgate/decision.rego\n" in out.stdout
    assert "cd proj" in out.stdout and "intentgate check" in out.stdout and "intentgate policy test" in out.stdout

    again = intentgate("init", "proj", cwd=tmp_path)
    assert again.returncode == 1 and "would overwrite intentgate.yaml" in again.stderr

    helped = intentgate("init", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "--force" in helped.stdout


def test_the_project_checks_and_its_policy_tests_pass(tmp_path: Path) -> None:
    """In the project's directory the CLI reads ./intentgate.yaml: no --config needed."""
    init_project(tmp_path)
    out = intentgate("check", "--offline", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"4 intents (13 steps) in {tmp_path / 'intents'}: 0 error(s), 0 warning(s)" in out.stdout
    out = intentgate("policy", "test", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"PASS: (\d+)/\1", out.stdout)


def test_check_without_a_project_says_how_to_make_one(tmp_path: Path) -> None:
    for args, code in ((["check"], 1), (["policy", "test"], 2)):
        out = intentgate(*args, cwd=tmp_path)
        assert out.returncode == code, out.stdout + out.stderr
        assert f"no intents at {tmp_path / 'intents'} and no policy at {tmp_path / 'opa'}" in out.stderr
        assert "no --config given and no ./intentgate.yaml here" in out.stderr and "intentgate init DIR" in out.stderr
    assert list(tmp_path.iterdir()) == []
