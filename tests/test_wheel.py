"""The built wheel, installed as a user installs it: a fresh venv outside the checkout, its
dependencies from the package index, every command run from a directory outside the checkout.

pip in the new venv reads the settings of the pip that installed this checkout (``PIP_*``
variables, ``pip.conf``), so it reaches the same index; with pip's cache warm from that install
it takes about a minute, the whole module about two and a half on two cores.  Marked ``wheel``
(``-m "not wheel"`` leaves it out locally); CI runs it: a failed build or install fails, never skips.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.wheel]

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    home: Path  # a working directory outside the checkout

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self) -> dict[str, str]:
        """The user's environment, minus whatever would point back into the checkout or at the
        test run's own services."""
        drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "VIRTUAL_ENV"}
        env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("INTENTGATE_")}
        path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not Path(p).resolve().is_relative_to(ROOT)]
        return {**env, "PATH": os.pathsep.join([str(self.bin), *path]), "COLUMNS": "200"}

    def intentgate(self, *args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        cwd = cwd or self.home
        assert not cwd.resolve().is_relative_to(ROOT)
        return subprocess.run([str(self.bin / "intentgate"), *args], cwd=cwd, env=self.env(), capture_output=True,
                              text=True, timeout=timeout)


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900) -> None:
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, args))}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    assert not base.resolve().is_relative_to(ROOT)
    dist, venv, home = base / "dist", base / "venv", base / "home"
    home.mkdir()
    # the wheel as `pip wheel` builds it for anyone: an isolated build with the declared backend
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", dist, ROOT, cwd=base)
    (wheel,) = dist.glob("intentgate-*.whl")
    _run(sys.executable, "-m", "venv", venv, cwd=base)
    probe = Installed(wheel, venv, home)
    _run(venv / "bin" / "python", "-m", "pip", "install", wheel, cwd=home, env=probe.env())
    return probe


def test_the_wheel_carries_the_examples_and_the_type_marker(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for name in ("intentgate/py.typed", "intentgate/_data/opa/intentgate/decision.rego",
                 "intentgate/_data/opa/intentgate/decision_test.rego", "intentgate/_data/opa/intentgate/data.json",
                 "intentgate/_data/intents/refund-order.yaml", "intentgate/_data/intents/refund-order.test.yaml",
                 "intentgate/_data/agents_examples/servers/payments.py", "intentgate/_data/agents_examples/support_agent.py",
                 "intentgate/store/migrations/versions/0001_baseline.py", "intentgate/ui/templates/layout.html"):
        assert name in names
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "bench/", "intents/", "opa/"))]

    # the installed package is the venv's, and it finds its examples there
    probe = ("import intentgate, intentgate.project as p; from importlib.resources import files; "
             "print(intentgate.__file__); print(files('intentgate').joinpath('py.typed').is_file()); "
             "e = p.examples(); print(e.installed, e.root)")
    out = subprocess.run([str(installed.bin / "python"), "-c", probe], cwd=installed.home, env=installed.env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    module, typed, examples = out.stdout.splitlines()
    site = installed.venv.resolve()
    assert Path(module).resolve().is_relative_to(site) and typed == "True"
    assert examples.startswith("True ") and Path(examples.split(" ", 1)[1]).is_relative_to(site)


def test_version(installed: Installed) -> None:
    out = installed.intentgate("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"intentgate {VERSION}"


def test_check_without_a_project_says_what_to_do(installed: Installed) -> None:
    empty = installed.home / "empty"
    empty.mkdir()
    out = installed.intentgate("check", cwd=empty)
    assert out.returncode == 1
    assert "no intents at" in out.stderr and "intentgate init DIR" in out.stderr
    assert list(empty.iterdir()) == []


def test_init_writes_a_project_that_checks_and_tests(installed: Installed) -> None:
    out = installed.intentgate("init", "proj")
    assert out.returncode == 0, out.stdout + out.stderr
    proj = installed.home / "proj"
    assert "wrote 20 files in" in out.stdout and "cd proj" in out.stdout and "intentgate check" in out.stdout
    for name in ("intentgate.yaml", "intents/refund-order.yaml", "intents/refund-order.test.yaml",
                 "opa/intentgate/decision.rego", "opa/intentgate/decision_test.rego", "opa/intentgate/data.json"):
        assert (proj / name).is_file(), name
    config = yaml.safe_load((proj / "intentgate.yaml").read_text())
    assert config["policy"] == {"engine": "embedded"} and config["identity"]["dev_issuer"] is True
    assert "url" not in config["store"]  # SQLite in var/

    # check: ./intentgate.yaml is read, and the example tool servers start from the installed package
    out = installed.intentgate("check", cwd=proj)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 intents (13 steps)" in out.stdout and "0 error(s), 0 warning(s)" in out.stdout
    assert "steps checked against 10 tools of 5 upstream(s)" in out.stdout
    assert "compiles (revision" in out.stdout

    out = installed.intentgate("policy", "test", cwd=proj)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS: " in out.stdout and "FAIL" not in out.stdout

    out = installed.intentgate("intent", "test", cwd=proj)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAIL" not in out.stdout

    # a second init refuses to overwrite what is there, unless --force
    before = (proj / "intents" / "refund-order.yaml").read_text()
    (proj / "intents" / "refund-order.yaml").write_text(before + "# edited\n")
    out = installed.intentgate("init", "proj")
    assert out.returncode == 1 and "would overwrite intentgate.yaml" in out.stderr and "--force" in out.stderr
    assert (proj / "intents" / "refund-order.yaml").read_text().endswith("# edited\n")
    out = installed.intentgate("init", "proj", "--force")
    assert out.returncode == 0, out.stderr
    assert (proj / "intents" / "refund-order.yaml").read_text() == before


def test_demo_runs_from_the_installed_package(installed: Installed) -> None:
    data = installed.home / "demo"
    out = installed.intentgate("demo", "--no-serve", "--data-dir", str(data))
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    for heading in ("1. The support queue assigns TCK-1001", "2. The same agent on TCK-1002", "3. An LLM-style agent",
                    "4. A large refund"):
        assert heading in out.stdout
    assert "Merkle tree and checkpoints verified" in out.stdout
    assert "serving until Ctrl-C" not in out.stdout
    # what it ran was the package's copy of the examples
    config = yaml.safe_load((data / "intentgate.yaml").read_text())
    site = installed.venv.resolve()
    assert Path(config["intents_dir"]).is_relative_to(site) and Path(config["policy_dir"]).is_relative_to(site)
    assert all(u["args"][1].startswith("intentgate._data.agents_examples.servers.") for u in config["upstreams"])
