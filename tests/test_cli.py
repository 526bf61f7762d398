"""The ``intentgate`` CLI, run as users run it: the real console script in a subprocess."""

from __future__ import annotations

import json
import re
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from intentgate.config import expand_env, load_config
from intentgate.errors import ConfigError
from tests.conftest import INTENTS_DIR, POLICY_DIR, ROOT


def intentgate(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "intentgate", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def imported_by(*args: str, cwd: Path = ROOT) -> set[str]:
    """The modules ``intentgate ARGS`` imports, from ``python -X importtime`` (one stderr line per
    module: ``import time: self | cumulative | <indented name>``)."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "intentgate", *args], cwd=cwd, capture_output=True, text=True,
        timeout=300, env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    names = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    return names - {"imported package"}  # the header line


def loaded(modules: set[str], *packages: str) -> list[str]:
    """Those of ``packages`` that ``modules`` holds, as themselves or through a submodule."""
    return sorted(p for p in packages if any(m == p or m.startswith(p + ".") for m in modules))


#: The serving stack: database, web and MCP servers, OPA client, and the gateway modules on top of them.
SERVING_STACK = ("sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn", "mcp", "aiohttp", "requests",
                 "opa_client", "intentgate.store", "intentgate.review", "intentgate.decide", "intentgate.runtime",
                 "intentgate.front", "intentgate.web", "intentgate.upstreams")


@pytest.mark.parametrize("args", [["--help"], ["check", "--help"], ["decisions", "--help"], ["show", "--help"],
                                  ["audit", "verify", "--help"], ["db", "--help"]], ids=" ".join)
def test_help_loads_only_the_command_table(args: list[str]) -> None:
    """``--help`` builds the command table from typer, rich and the option declarations: every
    command imports what it runs on only when it runs (see ``intentgate.cli``)."""
    modules = imported_by(*args)
    assert "intentgate.cli" in modules  # the measurement saw the CLI load
    assert loaded(modules, *SERVING_STACK, "regorus", "intentgate.policy", "intentgate.config", "intentgate.intents",
                  "intentgate.keys", "intentgate.identity") == []


def test_help_lists_commands() -> None:
    out = intentgate("--help")
    assert out.returncode == 0
    for cmd in ("check", "demo", "policy", "keys", "audit"):
        assert cmd in out.stdout


def test_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version
    from importlib.resources import files

    out = intentgate("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"intentgate {version('intentgate')}"
    assert files("intentgate").joinpath("py.typed").is_file()  # tool servers type-check against intentgate.verify


def test_reading_records_where_there_is_no_database_says_so(tmp_path: Path) -> None:
    for args in (["decisions"], ["audit", "verify"], ["approvals"]):
        out = intentgate(*args, cwd=tmp_path, env={"INTENTGATE_CONFIG": ""})
        assert out.returncode == 2, out.stdout + out.stderr
        assert "no database at" in out.stderr and "OperationalError" not in out.stdout + out.stderr
    assert not (tmp_path / "var").exists()  # nothing was created on the way


def test_every_config_key_is_in_the_readme() -> None:
    """The README's configuration examples name every key the config model accepts."""
    from pydantic import BaseModel

    from intentgate.config import GatewayConfig

    readme = (ROOT / "README.md").read_text()

    def keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
        for name, field in model.model_fields.items():
            yield prefix + name
            for t in (*getattr(field.annotation, "__args__", ()), field.annotation):
                if isinstance(t, type) and issubclass(t, BaseModel) and t is not model:
                    yield from keys(t, f"{prefix}{name}.")

    undocumented = [k for k in keys(GatewayConfig) if not re.search(rf"\b{re.escape(k.rsplit('.', 1)[-1])}:", readme)]
    assert undocumented == []


def test_check_passes_on_project() -> None:
    out = intentgate("check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 intents" in out.stdout and "0 error(s)" in out.stdout and "compiles" in out.stdout


def test_check_fails_and_locates_problems(tmp_path: Path) -> None:
    intents = tmp_path / "intents"
    shutil.copytree(INTENTS_DIR, intents)
    text = (intents / "refund-order.yaml").read_text().replace("next: [refund]", "next: [refnud]")
    (intents / "refund-order.yaml").write_text(text)
    out = intentgate("check", "--intents", str(intents), "--policy", str(POLICY_DIR))
    assert out.returncode == 1
    assert "refund-order.yaml" in out.stdout
    assert "intent 'refund-order', step 'lookup', field 'next': next step 'refnud' does not exist" in out.stdout


def test_check_fails_on_broken_policy(tmp_path: Path) -> None:
    policy = tmp_path / "opa"
    shutil.copytree(POLICY_DIR, policy)
    (policy / "intentgate" / "refunds.rego").write_text("package intentgate\n\nhold if {\n")
    out = intentgate("check", "--intents", str(INTENTS_DIR), "--policy", str(policy))
    assert out.returncode == 1
    assert "does not compile" in out.stdout


def write_config(data_dir: Path) -> Path:
    cfg = data_dir / "intentgate.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            intents_dir: {INTENTS_DIR}
            policy_dir: {POLICY_DIR}
            data_dir: {data_dir}
            """
        )
    )
    return cfg


def test_audit_verify_detects_tampering(tmp_path: Path) -> None:
    assert intentgate("demo", "--no-serve", "--data-dir", str(tmp_path)).returncode == 0
    cfg = write_config(tmp_path)
    db = sqlite3.connect(tmp_path / "intentgate.db")
    db.execute("UPDATE decisions SET outcome='allow', reasons='[]' WHERE outcome='deny'")
    db.commit()
    db.close()
    out = intentgate("audit", "verify", "--config", str(cfg))
    assert out.returncode == 1
    assert "BROKEN" in out.stdout and "edited" in out.stdout


def test_read_commands_load_only_what_they_use(tmp_path: Path) -> None:
    """``check`` compiles the policy (regorus) but opens no database; ``decisions`` and ``audit
    verify`` read the database but start no server, front or OPA client."""
    cfg = write_config(tmp_path)
    intentgate("db", "upgrade", "--config", str(cfg)).check_returncode()  # an empty database to read
    check = imported_by("check", "--offline", "--config", str(cfg))
    assert "regorus" in check and loaded(check, *SERVING_STACK) == []
    servers = ("fastapi", "starlette", "uvicorn", "mcp", "aiohttp", "requests", "opa_client", "intentgate.runtime",
               "intentgate.front", "intentgate.web", "intentgate.upstreams")
    decisions = imported_by("decisions", "--config", str(cfg))
    assert "intentgate.review" in decisions and loaded(decisions, *servers) == []
    verify = imported_by("audit", "verify", "--config", str(cfg))
    assert "intentgate.store" in verify and loaded(verify, *servers, "intentgate.review", "intentgate.decide") == []


def test_keys_rotate_and_jwks(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    first = intentgate("keys", "rotate", "--dir", str(d))
    assert first.returncode == 0 and "new signing key" in first.stdout
    second = intentgate("keys", "rotate", "--dir", str(d))
    assert "stays in the JWKS" in second.stdout
    jwks = json.loads(intentgate("keys", "jwks", "--dir", str(d)).stdout)
    assert len(jwks["keys"]) == 2 and all("d" not in k for k in jwks["keys"])
    listing = intentgate("keys", "list", "--dir", str(d))
    assert "current (signs)" in listing.stdout and "previous (verifies)" in listing.stdout


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "intentgate.yaml"
    cfg.write_text("intents_dir: intents\ncolour: blue\n")
    out = intentgate("check", "--config", str(cfg))
    assert out.returncode == 2
    assert "colour" in out.stderr and "Extra inputs are not permitted" in out.stderr


def test_config_env_expansion(tmp_path: Path) -> None:
    assert expand_env({"a": ["${X}", "pre-${Y:-dflt}"]}, {"X": "1"}) == {"a": ["1", "pre-dflt"]}
    with pytest.raises(ConfigError, match="store.url: environment variable DB_URL is not set"):
        expand_env({"store": {"url": "${DB_URL}"}}, {})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("store:\n  url: ${IG_TEST_URL}\ndata_dir: state\n")
    os.environ["IG_TEST_URL"] = "sqlite:////tmp/x.db"
    try:
        loaded = load_config(cfg)
    finally:
        del os.environ["IG_TEST_URL"]
    assert loaded.database_url == "sqlite:////tmp/x.db"
    assert loaded.data_dir == tmp_path / "state"  # relative to the config file
