"""Policy engines: the same Rego files answered in process or by an OPA server.

Both engines answer ``data.intentgate.decision`` for an input (see DESIGN.md, "The policy
contract") with a :class:`PolicyResult`; anything else (error, timeout, undefined or
off-contract answer) raises ``PolicyError`` so that the caller denies.  Policy and data are
loaded once and reloaded when the files change, never per call.

- :class:`EmbeddedEngine`: regorus compiled program on its VM, in process (the default).
- :class:`OpaServerEngine`: a real OPA server over its REST Data API.
- :func:`run_rego_tests`: the policy's ``*_test.rego`` unit tests, like ``opa test``.

Modules::

    _result     PolicyResult, PolicyEngine (the contract)
    _bundle     reading a policy dir, data documents by directory, change detection
    _notes      ReasonNote: the reasons explained by the rules' METADATA annotations
    _embedded   EmbeddedEngine
    _opa        OpaServerEngine
    _factory    make_engine
    _regotest   run_rego_tests
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._bundle import PolicyBundle, load_policy_dir
from ._embedded import EmbeddedEngine
from ._factory import make_engine
from ._notes import ReasonNote, read_reason_notes
from ._regotest import RegoTestResult, run_rego_tests
from ._result import DECISION_PATH, PolicyEngine, PolicyResult, parse_result

if TYPE_CHECKING:
    from ._opa import OpaServerEngine

__all__ = [
    "DECISION_PATH",
    "EmbeddedEngine",
    "OpaServerEngine",
    "PolicyBundle",
    "PolicyEngine",
    "PolicyResult",
    "ReasonNote",
    "RegoTestResult",
    "load_policy_dir",
    "make_engine",
    "parse_result",
    "read_reason_notes",
    "run_rego_tests",
]


def __getattr__(name: str) -> Any:
    """``OpaServerEngine`` is imported on first use: its client pulls in aiohttp and requests,
    which the embedded engine and the CLI never need."""
    if name == "OpaServerEngine":
        from ._opa import OpaServerEngine

        return OpaServerEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
