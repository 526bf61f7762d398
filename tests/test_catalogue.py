"""Intents held against the upstreams' real ``tools/list``: ``intentgate check`` (and
``intentgate serve`` at start) with the real `mcp-server-git` (PyPI, installed by .ci/run)
and the demo's tool servers, as subprocess upstreams."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from intentgate.catalogue import check_against, fetch_catalogue
from intentgate.config import load_config
from intentgate.demo import write_config
from intentgate.intents import Severity, check_intents
from tests.conftest import INTENTS_DIR, POLICY_DIR, ROOT
from tests.test_cli import intentgate

pytestmark = pytest.mark.slow

GIT_SERVER = shutil.which("mcp-server-git", path=str(Path(sys.executable).parent)) or shutil.which("mcp-server-git")

# The intent a new user writes for mcp-server-git, with the two typos of the issue.
GIT_INTENT = """\
name: review-changes
version: "1"
description: Look at what changed in the repository and at its recent history.
agents: ["spiffe://example.org/agent/dev-*"]
begin: [agent]
params:
  repo: {type: string, maxLength: 200}
start: [diff]
steps:
  diff:
    tool: git.git_diff_unstagd
    arguments:
      repo_path: {bind: params.repo}
    next: [log]
  log:
    tool: gti.git_log
    arguments:
      repo_path: {bind: params.repo}
      max_count: {type: integer, minimum: 1, maximum: 20, optional: true}
    next: [stage]
  stage:
    tool: git.git_add
    arguments:
      repo_path: {bind: params.repo}
      file: {type: array, items: {type: string}}
    next: [commit]
  commit:
    tool: git.git_commit
    arguments:
      repo_path: {bind: params.repo}
"""


@pytest.fixture
def git_config(tmp_path: Path) -> Path:
    if not GIT_SERVER:
        if os.environ.get("CI"):
            pytest.fail("mcp-server-git is not installed in CI (it is a dev dependency)")
        pytest.skip("mcp-server-git is not installed (pip install -e '.[dev]')")
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    intents = tmp_path / "intents"
    intents.mkdir()
    (intents / "review-changes.yaml").write_text(GIT_INTENT)
    cfg = tmp_path / "intentgate.yaml"
    cfg.write_text(yaml.safe_dump({
        "intents_dir": str(intents), "policy_dir": str(POLICY_DIR), "data_dir": str(tmp_path),
        "upstreams": [{"name": "git", "command": GIT_SERVER, "args": ["--repository", str(repo)],
                       "timeout_seconds": 30}],
    }))
    return cfg


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def test_typos_and_wrong_arguments_are_errors_naming_file_line_step_and_field(git_config: Path) -> None:
    out = intentgate("check", "--strict", "--config", str(git_config))
    assert out.returncode == 1, out.stdout + out.stderr
    text = " ".join(out.stdout.split())  # rich wraps long lines
    where = "review-changes.yaml"
    assert (f"{where}:{line_of(GIT_INTENT, 'git_diff_unstagd')}, intent 'review-changes', step 'diff', field 'tool': "
            "upstream 'git' has no tool 'git_diff_unstagd' (did you mean 'git_diff_unstaged'") in text
    assert (f"{where}:{line_of(GIT_INTENT, 'gti.git_log')}, intent 'review-changes', step 'log', field 'tool': "
            "upstream 'gti' is not configured (did you mean 'git'?) (configured: git)") in text
    assert (f"{where}:{line_of(GIT_INTENT, 'file: {type: array')}, intent 'review-changes', step 'stage', "
            "field 'arguments.file': tool 'git.git_add' takes no argument 'file' (did you mean 'files'?)") in text
    assert "step 'stage', field 'arguments': tool 'git.git_add' requires 'files'" in text
    assert "step 'commit', field 'arguments': tool 'git.git_commit' requires 'message'" in text
    assert "5 error(s)" in text and "steps checked against 12 tools of 1 upstream(s)" in text


def test_the_corrected_intent_passes(git_config: Path) -> None:
    intents = Path(load_config(git_config).intents_dir)
    fixed = (GIT_INTENT.replace("git_diff_unstagd", "git_diff_unstaged").replace("gti.git_log", "git.git_log")
             .replace("file: {type: array", "files: {type: array")
             .replace("    tool: git.git_commit\n    arguments:\n",
                      "    tool: git.git_commit\n    arguments:\n      message: {type: string, maxLength: 200}\n"))
    (intents / "review-changes.yaml").write_text(fixed)
    out = intentgate("check", "--strict", "--config", str(git_config))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 error(s), 0 warning(s); steps checked against 12 tools of 1 upstream(s)" in " ".join(out.stdout.split())


def test_offline_skips_the_upstreams(git_config: Path) -> None:
    out = intentgate("check", "--offline", "--config", str(git_config))
    assert out.returncode == 0, out.stdout + out.stderr  # the typos are only visible against the tools
    assert "tools not checked (--offline)" in out.stdout


def test_an_upstream_that_does_not_start_is_one_error_per_upstream(tmp_path: Path, git_config: Path) -> None:
    document = yaml.safe_load(git_config.read_text())
    document["upstreams"][0] = {"name": "git", "command": str(tmp_path / "no-such-server"), "timeout_seconds": 5}
    git_config.write_text(yaml.safe_dump(document))
    registry, _ = check_intents(Path(document["intents_dir"]))
    catalogue = asyncio.run(fetch_catalogue(load_config(git_config)))
    problems = check_against(registry, catalogue)
    unlisted = [p for p in problems if "did not list its tools" in p.message]
    assert len(unlisted) == 1 and unlisted[0].step == "diff"  # not once per step
    assert any("'gti' is not configured" in p.message for p in problems)


def test_shipped_intents_match_the_demo_servers(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "demo")
    out = intentgate("check", "--strict", "--config", str(cfg))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 error(s), 0 warning(s); steps checked against" in out.stdout
    assert "of 5 upstream(s)" in out.stdout


def test_a_constraint_contradicting_the_tools_type(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "demo")
    intents = tmp_path / "intents"
    shutil.copytree(INTENTS_DIR, intents)
    path = intents / "rotate-credential.yaml"
    path.write_text(path.read_text().replace("grace_period_seconds: {type: integer", "grace_period_seconds: {type: string"))
    registry, problems = check_intents(intents)
    assert not [p for p in problems if p.severity is Severity.ERROR]  # fine on its own
    found = check_against(registry, asyncio.run(fetch_catalogue(load_config(cfg))))
    assert [(p.intent, p.step, p.field, p.message) for p in found] == [(
        "rotate-credential", "rotate", "arguments.grace_period_seconds",
        "argument 'grace_period_seconds' is constrained to string, but tool 'secrets.rotate_credential' takes "
        "integer/number",
    )]
    assert found[0].line == next(n for n, line in enumerate(path.read_text().splitlines(), 1)
                                 if "grace_period_seconds: {type: string" in line)


def test_serve_refuses_to_start_on_a_mismatch_when_told_to(git_config: Path, tmp_path: Path) -> None:
    document = yaml.safe_load(git_config.read_text())
    git_config.write_text(yaml.safe_dump({**document, "upstream_check": "refuse"}))
    out = subprocess.run(
        [sys.executable, "-m", "intentgate", "serve", "--config", str(git_config), "--port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode != 0
    assert "upstream 'git' has no tool 'git_diff_unstagd'" in out.stderr  # logged, every one
    assert "intent step problem(s) against the upstreams (upstream_check: refuse)" in out.stderr

