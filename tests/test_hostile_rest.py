"""The REST API fuzzed from its own OpenAPI schema (schemathesis), against a running gateway.

``intentgate serve`` as a subprocess on 127.0.0.1 with a real SQLite store holding real
decisions (a task begun, calls allowed, denied and held over MCP, a grant), and real
credentials: a reviewer admin token from the admin key set, an agent's workload token,
garbage and none.  For every operation, generated requests (valid and invalid) must never
get a 5xx, and every response must conform to the schema: a documented status code, the
documented content type, a body of the documented shape, and 401/403 without a valid
reviewer token.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from intentgate.keys import KeySet
from intentgate.review import AdminTokenIssuer
from tests.tasks import grant_args
from tests.test_front_stdio import PARAMS, SUPPORT
from tests.test_hostile_jsonrpc import HttpGateway, http_session

pytestmark = pytest.mark.slow



CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def held_refund(gw: HttpGateway) -> None:
    """Real rows for the reviewer API to return: allowed, denied and held calls, and a grant."""
    task = gw.call("intentgate__begin_task", grant_args(gw.data_dir, SUPPORT, "refund-order", PARAMS,
                                                        "rest fuzz"))["structuredContent"]["task"]
    for name, arguments, step in [("tickets__get_ticket", {"ticket_id": "TCK-1"}, "read_ticket"),
                                  ("orders__get_order", {"order_id": "ORD-7"}, "lookup"),
                                  ("orders__get_order", {"order_id": "ORD-8"}, "refund"),
                                  ("payments__refund", {"order_id": "ORD-7", "amount": 1800, "currency": "EUR"},
                                   "refund")]:
        gw.call(name, {**arguments, "intent_task": task, "intent_step": step})


@pytest.fixture(scope="module")
def rest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HttpGateway, dict[str, str]]]:
    tmp_path = tmp_path_factory.mktemp("hostile-rest")
    with http_session(tmp_path, "rest") as gw:
        held_refund(gw)
        admin = AdminTokenIssuer(KeySet.open_or_create(tmp_path / "keys" / "admin")).mint("fuzzer", 3600)
        grant = httpx2.post(f"{gw.base}/v1/grants", headers={"Authorization": f"Bearer {admin}"}, json={
            "agent": "spiffe://example.org/agent/support-1", "tool": "payments.refund", "reason": "fuzz",
            "duration_seconds": 600}, timeout=10)
        assert grant.status_code == 201, grant.text
        yield gw, {"admin": admin, "agent": gw.token, "garbage": "not.a.jwt", "none": ""}


@pytest.fixture(scope="module")
def operations(rest: tuple[HttpGateway, dict[str, str]]) -> dict[str, list[Any]]:
    """The API's operations, from the schema the running gateway serves: the reviewer's, and
    ``POST /v1/decide`` (for enforcement points, with an agent's workload token)."""
    gw, _ = rest
    loaded = schemathesis.openapi.from_url(f"{gw.base}/openapi.json").include(path_regex="^/v1/")
    found = [result.ok() for result in loaded.get_all_operations()]
    review = [op for op in found if "review" in (op.tags or [])]
    assert {f"{op.method.upper()} {op.path}" for op in review} >= {
        "GET /v1/decisions", "GET /v1/decisions/{decision_id}", "GET /v1/audit/export", "GET /v1/approvals",
        "POST /v1/approvals/{approval_id}/approve", "POST /v1/grants", "POST /v1/replay"}
    decide = [op for op in found if op.path == "/v1/decide"]
    assert len(decide) == 1
    # the rest of /v1 (token redemption for tool servers) carries its credential in the body
    return {"review": review, "decide": decide, "other": [op for op in found if op not in review + decide]}


@pytest.mark.parametrize(("api", "who", "mode", "examples"), [
    ("review", "admin", GenerationMode.POSITIVE, 40),
    ("review", "admin", GenerationMode.NEGATIVE, 40),
    ("review", "agent", GenerationMode.POSITIVE, 6),
    ("review", "agent", GenerationMode.NEGATIVE, 6),
    ("review", "garbage", GenerationMode.POSITIVE, 6),
    ("review", "none", GenerationMode.NEGATIVE, 6),
    ("decide", "agent", GenerationMode.POSITIVE, 40),
    ("decide", "agent", GenerationMode.NEGATIVE, 40),
    ("decide", "admin", GenerationMode.POSITIVE, 10),
    ("decide", "none", GenerationMode.POSITIVE, 10),
    ("other", "none", GenerationMode.POSITIVE, 25),
    ("other", "none", GenerationMode.NEGATIVE, 25),
])
def test_api_conforms_to_its_schema(
    rest: tuple[HttpGateway, dict[str, str]], operations: dict[str, list[Any]], api: str, who: str,
    mode: GenerationMode, examples: int,
) -> None:
    """Generated requests (``positive``: valid by the schema; ``negative``: not) for every operation."""
    gw, tokens = rest
    headers = {"Authorization": f"Bearer {tokens[who]}"} if tokens[who] else {}
    logged = gw.log.stat().st_size
    statuses: set[int] = set()
    # the reviewer API takes reviewers only; /v1/decide takes agents only (never an admin token)
    allowed = api == "other" or who == ("admin" if api == "review" else "agent")
    refusal = 403 if (api, who) == ("review", "agent") else 401
    for operation in operations[api]:

        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: Any) -> None:
            response = case.call_and_validate(headers=headers, checks=CHECKS)
            statuses.add(response.status_code)
            if mode is GenerationMode.NEGATIVE:
                pass  # the generated request may have broken its own Authorization header too
            elif api == "other":
                pass  # no 5xx, and conformance: the checks above
            elif allowed:
                assert response.status_code not in (401, 403), response.text[:300]
            else:  # without the right credential only the refusal, whatever else is wrong
                assert response.status_code in (refusal, 422), response.text[:300]
                assert "spiffe://" not in response.text and "tsk_" not in response.text

        fuzz()
    if allowed and api != "other":  # the fuzz got past authentication and reached the service
        assert statuses & ({200, 201} if mode is GenerationMode.POSITIVE else {400, 422}), statuses
    assert "Traceback" not in gw.log.read_bytes()[logged:].decode(errors="replace")
    assert gw.http.get(f"{gw.base}/healthz").status_code == 200


@pytest.mark.parametrize(("path", "params"), [
    ("/v1/audit/export", {"after_seq": str(2**63)}),
    ("/v1/audit/export", {"after_seq": str(2**63 - 1)}),
    ("/v1/decisions", {"before": str(2**63)}),
    ("/v1/decisions", {"before": str(2**63 - 1)}),
])
def test_sequence_numbers_beyond_the_database_integer(rest: tuple[HttpGateway, dict[str, str]], path: str,
                                                      params: dict[str, str]) -> None:
    """Regression: ``after_seq=2**63`` overflowed SQLite's integer inside the export stream, which
    then ended mid-response; now the largest stored integer is the limit (422 beyond it)."""
    gw, tokens = rest
    r = httpx2.get(f"{gw.base}{path}", params=params, headers={"Authorization": f"Bearer {tokens['admin']}"},
                   timeout=10)
    if int(next(iter(params.values()))) > 2**63 - 1:
        assert r.status_code == 422, r.text
    else:
        assert r.status_code == 200 and (r.text == "" if path.endswith("export") else r.json()["items"]), r.text
