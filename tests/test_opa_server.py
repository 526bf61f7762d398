"""Against the real Open Policy Agent (the binary `.ci/run` builds from OPA's Go module).

- the whole Rego test suite (every ``test_*`` rule of ``opa/``) passes on OPA twice over: with
  ``opa test`` on the policy dir and the intents, and on a server the modules, tests and data
  were uploaded to over the REST API, each test rule queried;
- decision parity: the gateway's OPA-server engine and the embedded engine decide the same on
  1,000 policy inputs recorded by the pipeline;
- decision-log correlation: OPA's console decision log carries the gateway's decision id
  (a request header OPA is configured to keep), and the gateway's result OPA's decision id;
- ``push_policy: false``: OPA pulls the bundle ``intentgate policy bundle`` wrote from a local
  HTTP server, and decisions record the bundle revision that answered; a bundle that fails to
  activate leaves OPA without the policy, and every query is refused until a good one lands.

Without an OPA binary these skip, saying why; CI (``INTENTGATE_REQUIRE_OPA``) fails them.
"""

from __future__ import annotations

import gzip
import http.server
import io
import json
import tarfile
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from typer.testing import CliRunner

from intentgate.cli import app
from intentgate.errors import PolicyError
from intentgate.policy import EmbeddedEngine, OpaServerEngine, load_policy_dir, run_rego_tests
from intentgate.policy._modules import merge_by_package
from intentgate.policy._opa import DECISION_ID_HEADER
from tests.conftest import INTENTS_DIR, POLICY_DIR
from tests.opa import OpaProcess, need_opa_binary
from tests.processes import startup_budget
from tests.test_policy import base_input

pytestmark = pytest.mark.opa


@pytest.fixture
def opa(opa_url: str) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=opa_url, timeout=30) as client:
        yield client


def test_opa_test_passes_the_project_rego_suite(tmp_path: Path, registry) -> None:
    """``opa test`` itself, on the policy dir plus the intents as ``data.intentgate.intents``."""
    expected = run_rego_tests(POLICY_DIR, registry.data_document())
    intents = tmp_path / "intents-data" / "intentgate"
    intents.mkdir(parents=True)
    (intents / "data.json").write_text(json.dumps({"intents": registry.data_document()}))
    run = subprocess.run([need_opa_binary(), "test", str(POLICY_DIR), str(tmp_path / "intents-data"), "--format",
                          "json"], capture_output=True, text=True, timeout=startup_budget(120))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    results = json.loads(run.stdout)
    ran = {(r["package"].removeprefix("data."), r["name"]) for r in results}
    assert ran == {(t.package, t.name.split("[")[0]) for t in expected}
    assert all(r.get("fail") is not True and not r.get("error") for r in results)
    print(f"\nopa test: {len(results)} Rego tests passed on OPA")


def test_the_rego_test_suite_passes_on_the_opa_server(opa: httpx2.Client, registry) -> None:
    bundle = load_policy_dir(POLICY_DIR)
    intents_doc = registry.data_document()
    expected = run_rego_tests(POLICY_DIR, intents_doc)
    assert expected and all(t.passed for t in expected)
    prefix = f"intentgate-test-{uuid.uuid4().hex[:8]}"
    # the same package pushed by the gateway's engine (ids intentgate/...) would clash
    for policy in opa.get("/v1/policies").json().get("result", []):
        if policy["id"].startswith("intentgate/"):
            opa.delete(f"/v1/policies/{policy['id']}")
    uploaded = merge_by_package([*bundle.modules, *bundle.tests])
    try:
        for module_id, text in uploaded:
            r = opa.put(f"/v1/policies/{prefix}/{module_id}", content=text.encode(),
                        headers={"Content-Type": "text/plain"})
            assert r.status_code == 200, r.text
        for key, value in bundle.data_with(intents_doc).items():
            assert opa.put(f"/v1/data/{key}", json=value).status_code == 204
        failed = []
        for t in expected:
            r = opa.get(f"/v1/data/{t.package.replace('.', '/')}/{t.name}")
            result = r.json().get("result") if r.status_code == 200 else None
            # a table-driven test (test_x[note]) is an object of its cases, each of which must hold
            passed = result is True or (isinstance(result, dict) and result and all(v is True for v in result.values()))
            if not passed:
                failed.append((t.ref, r.status_code, r.text[:300]))
        assert not failed, failed
    finally:
        for module_id, _ in uploaded:
            opa.delete(f"/v1/policies/{prefix}/{module_id}")
    print(f"\nOPA server: {len(expected)} Rego tests passed")


async def test_opa_server_and_embedded_decide_alike_on_recorded_inputs(
    opa_url: str, registry, recorded_inputs: list[dict]
) -> None:
    intents_doc = registry.data_document()
    embedded = EmbeddedEngine(POLICY_DIR, intents_doc)
    server = OpaServerEngine(opa_url, POLICY_DIR, intents_doc, timeout=10.0)
    try:
        mismatches = []
        for inp in recorded_inputs:
            ours, theirs = embedded.evaluate_sync(inp), await server.evaluate(inp)
            if not ours.same_decision(theirs):
                mismatches.append((inp, ours, theirs))
    finally:
        await server.aclose()
    assert len(recorded_inputs) == 1000
    same = len(recorded_inputs) - len(mismatches)
    print(f"\nembedded vs OPA server: {same}/{len(recorded_inputs)} identical decisions "
          f"({100 * same / len(recorded_inputs):.1f} %)")
    assert not mismatches, f"{len(mismatches)} differing decisions, first: {mismatches[0]}"


async def test_decision_logs_correlate_the_gateway_and_opa_ids(tmp_path: Path, registry) -> None:
    config = {"decision_logs": {"console": True,
                                "request_context": {"http": {"headers": [DECISION_ID_HEADER]}}}}
    server = OpaProcess(tmp_path, config=config).start()
    engine = OpaServerEngine(server.url, POLICY_DIR, registry.data_document())
    try:
        result = await engine.evaluate(base_input(), decision_id="dec_correlation1")
    finally:
        await engine.aclose()
        server.stop()
    assert result.allow and result.engine_decision_id
    logged = [r for r in server.log_records() if r.get("msg") == "Decision Log"]
    assert len(logged) == 1, server.log_text()[-2000:]
    entry = logged[0]
    assert entry["decision_id"] == result.engine_decision_id
    headers = entry["request_context"]["http"]["headers"]
    assert headers[DECISION_ID_HEADER] == ["dec_correlation1"]
    assert entry["input"] == base_input() and entry["result"]["allow"] is True


# ----- push_policy: false, OPA on bundles ----------------------------------------------------------


class _BundleServer:
    """A local HTTP server holding bundle files, the service OPA pulls its bundle from."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        handler = type("Handler", (http.server.SimpleHTTPRequestHandler,),
                       {"log_message": lambda *a: None,
                        "__init__": lambda self, *a, **kw: http.server.SimpleHTTPRequestHandler.__init__(
                            self, *a, directory=str(root), **kw)})
        self.root = root
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _write_bundle(out: Path, policy_dir: Path) -> None:
    r = CliRunner().invoke(app, ["policy", "bundle", "-o", str(out), "--policy", str(policy_dir),
                                 "--intents", str(INTENTS_DIR)])
    assert r.exit_code == 0, r.output


def _bundle_opa(workdir: Path, bundles: _BundleServer) -> OpaProcess:
    return OpaProcess(workdir, config={
        "services": {"bundles": {"url": bundles.url}},
        "bundles": {"intentgate": {"service": "bundles", "resource": "intentgate.tar.gz",
                                   "polling": {"min_delay_seconds": 1, "max_delay_seconds": 2}}},
    })


async def test_opa_on_a_bundle_answers_and_decisions_name_its_revision(tmp_path: Path, registry) -> None:
    bundles = _BundleServer(tmp_path / "srv")
    _write_bundle(bundles.root / "intentgate.tar.gz", POLICY_DIR)
    server = _bundle_opa(tmp_path / "opa", bundles).start()
    engine = OpaServerEngine(server.url, POLICY_DIR, registry.data_document(), push_policy=False)
    try:
        server.wait_healthy(bundles=True)
        embedded = EmbeddedEngine(POLICY_DIR, registry.data_document())
        result = await engine.evaluate(base_input())
        assert result.same_decision(embedded.evaluate_sync(base_input())) and result.allow
        assert engine.revision == f"bundle:{embedded.revision}"  # the manifest's revision: the same policy
        with httpx2.Client(base_url=server.url) as opa:  # the bundle's files (bundle/path), nothing pushed
            ids = {p["id"] for p in opa.get("/v1/policies").json()["result"]}
        assert ids == {f"intentgate/{m}" for m, _ in load_policy_dir(POLICY_DIR).modules}
    finally:
        await engine.aclose()
        server.stop()
        bundles.close()


async def test_a_bundle_that_fails_to_activate_denies_until_a_good_one_lands(tmp_path: Path, registry) -> None:
    bundles = _BundleServer(tmp_path / "srv")
    # `intentgate policy bundle` refuses a policy that does not compile: the broken one is made by hand
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, content in [("/.manifest", b'{"revision": "broken", "roots": ["intentgate"]}'),
                              ("/intentgate/p.rego", b"package intentgate\n\nimport rego.v1\n\ndecision := {\n")]:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    (bundles.root / "intentgate.tar.gz").write_bytes(raw.getvalue())
    server = _bundle_opa(tmp_path / "opa", bundles).start()
    engine = OpaServerEngine(server.url, POLICY_DIR, registry.data_document(), push_policy=False, timeout=2.0)
    try:
        with pytest.raises(RuntimeError):  # OPA stays up, but its bundle never activates
            server.wait_healthy(bundles=True, timeout=4)
        assert any("Bundle load failed" in str(r.get("msg")) for r in server.log_records()), server.log_text()[-2000:]
        with pytest.raises(PolicyError):
            await engine.evaluate(base_input())
        _write_bundle(bundles.root / "intentgate.tar.gz", POLICY_DIR)  # the fixed bundle is published
        server.wait_healthy(bundles=True)
        assert (await engine.evaluate(base_input())).allow
        assert engine.revision.startswith("bundle:")
    finally:
        await engine.aclose()
        server.stop()
        bundles.close()
