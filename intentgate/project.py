"""A project directory, and the examples shipped with the package.

A project is what the gateway serves: ``intentgate.yaml``, ``intents/`` (one YAML file per
intent, ``*.test.yaml`` their fixtures) and ``opa/`` (the Rego policy and its tests, the base
policy in ``opa/intentgate/``).  :func:`init_project` writes one (``intentgate init``) from
the examples: the repository's ``intents/``, ``opa/`` and ``agents_examples/`` (the demo's
tool servers and agents), which the wheel carries as ``intentgate/_data/`` (see pyproject.toml).
:func:`examples` says where they are: inside the installed package, else in the source
checkout this module runs from.

Nothing here falls back to the examples for a project that is missing: a gateway that served
the example intents (which move money) because ``intents/`` was not where it looked would fail
open; the CLI says instead where it looked and how to create a project.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

__all__ = [
    "CONFIG_NAME",
    "ORCHESTRATOR",
    "SERVERS",
    "TASK_ISSUERS",
    "Examples",
    "examples",
    "init_project",
    "project_files",
    "render_config",
]

#: The config file a project keeps at its root; the CLI reads ``./intentgate.yaml`` without --config.
CONFIG_NAME = "intentgate.yaml"

_PACKAGE_DIR = Path(__file__).resolve().parent
_SHIPPED = _PACKAGE_DIR / "_data"  # in an installed wheel only
_CHECKOUT = _PACKAGE_DIR.parent

#: The example tool servers (``agents_examples/servers``), each an upstream of the same name.
SERVERS = ("tickets", "orders", "payments", "email", "secrets")
#: The support queue: the task issuer that begins the support agents' tasks (agents_examples/orchestrator.py).
ORCHESTRATOR = "spiffe://example.org/orchestrator"
TASK_ISSUERS = [
    {"name": "support-queue", "subjects": [ORCHESTRATOR], "intents": ["refund-order", "triage-ticket"],
     "agents": ["spiffe://example.org/agent/support-*"]},
]


@dataclass(frozen=True)
class Examples:
    """Where the example intents, policy, tool servers and agents are."""

    root: Path  # holds intents/, opa/ and agents_examples/
    package: str  # the import name of agents_examples/ there
    installed: bool  # shipped in the package (else a source checkout)

    @property
    def intents_dir(self) -> Path:
        return self.root / "intents"

    @property
    def policy_dir(self) -> Path:
        return self.root / "opa"

    @property
    def servers_dir(self) -> Path:
        return self.root / "agents_examples" / "servers"

    def server_module(self, name: str) -> str:
        return f"{self.package}.servers.{name}"

    def server_cwd(self) -> Path | None:
        """The directory a server must start in: a checkout's ``agents_examples`` is importable
        from its root only; the installed copy from anywhere."""
        return None if self.installed else self.root


def examples() -> Examples:
    """The examples shipped in the installed package, else those of this source checkout."""
    if (_SHIPPED / "intents").is_dir():
        return Examples(_SHIPPED, "intentgate._data.agents_examples", installed=True)
    return Examples(_CHECKOUT, "agents_examples", installed=False)


def project_files(source: Examples | None = None) -> dict[str, bytes]:
    """What ``intentgate init`` copies, by path in the new project: every intent and fixture, and
    every policy module, test and data document of ``opa/``."""
    source = source or examples()
    files: dict[str, bytes] = {}
    for top, directory in (("intents", source.intents_dir), ("opa", source.policy_dir)):
        if not directory.is_dir():
            raise ConfigError(f"{directory}: the examples are missing from this installation of intentgate")
        for path in sorted(directory.rglob("*")):
            if path.is_file() and path.suffix in (".yaml", ".yml", ".rego", ".json"):
                files[f"{top}/{path.relative_to(directory).as_posix()}"] = path.read_bytes()
    return files


def _q(value: str) -> str:
    return json.dumps(value)  # a JSON string is a YAML scalar, whatever it holds


def render_config(project: Path, source: Examples | None = None, *, python: str | None = None) -> str:
    """The project's ``intentgate.yaml``: the defaults written out (SQLite in ``var/``, embedded
    Rego, the development issuer) and the example tool servers as its upstreams.  Every key is
    one the README's configuration section describes."""
    source = source or examples()
    python = python or sys.executable
    cwd = source.server_cwd()
    # installed: the servers run from the project (their data in var/servers); a checkout's from its root
    servers_data = "var/servers" if cwd is None else str(project.resolve() / "var" / "servers")
    lines = []
    for name in SERVERS:
        entry = (f"  - {{name: {name}, command: {_q(python)},\n"
                 f"     args: [-m, {source.server_module(name)}, --data-dir, {_q(servers_data)}],\n"
                 f"     cwd: {_q(str(cwd) if cwd else '.')}, timeout_seconds: 30")
        if name == "payments":  # it checks every action token against the gateway's published keys
            entry += ",\n     env: {INTENTGATE_JWKS: \"http://127.0.0.1:8080/.well-known/jwks.json\"}"
        lines.append(entry + "}")
    upstreams = "\n".join(lines)
    issuers = "\n".join(
        f"    - {{name: {i['name']}, subjects: {json.dumps(i['subjects'])}, intents: {json.dumps(i['intents'])},\n"
        f"       agents: {json.dumps(i['agents'])}}}" for i in TASK_ISSUERS)
    return f"""\
# An IntentGate project, written by `intentgate init`. Every key is described in the README's
# "Configuration" section; unknown keys are errors. Relative paths are relative to this file.
intents_dir: intents                # one YAML file per intent; *.test.yaml are their fixtures
policy_dir: opa                     # the Rego policy and its tests (opa/intentgate/: the base policy)
data_dir: var                       # the signing keys and the SQLite database: keep it out of version control
environment: prod                   # input.context.environment for the policy (see opa/intentgate/change_window.rego)
store: {{migrate: true}}              # no url: SQLite in data_dir
policy: {{engine: embedded}}          # or {{engine: opa, url: http://127.0.0.1:8181}}
identity:
  dev_issuer: true                  # trust `intentgate agent-token` tokens: turn off in production
tasks:                              # who begins tasks (README: Who begins a task)
  begin: [issuer]                   # for intents whose file has no `begin:`
  issuers:                          # the example support queue (agents_examples/orchestrator.py)
{issuers}
# the example tool servers shipped with intentgate (README: Example agents); put your own here
upstreams:
{upstreams}
upstream_check: log                 # at start, log each intent step that does not match its upstream
"""


def init_project(directory: Path, *, force: bool = False, source: Examples | None = None) -> list[Path]:
    """Write a project into ``directory`` (created if need be); the files written, in order.

    ``ConfigError`` naming every file that exists already, unless ``force``: nothing is written then.
    """
    source = source or examples()
    directory = Path(directory)
    files = {CONFIG_NAME: render_config(directory, source).encode(), **project_files(source)}
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} exists and is not a directory")
    existing = [name for name in files if (directory / name).exists()]
    if existing and not force:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise ConfigError(f"{directory}: would overwrite {shown} (--force to overwrite)")
    written = []
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    return written
