"""`intentgate policy bundle`: an OPA bundle that decides exactly like the policy dir.

The bundle's own files (modules and data.json, read back from the archive) are loaded into
rego-cpp (regopy, an independent Rego implementation, in a child process) and compared with
the embedded engine on the policy dir, over 1,000 policy inputs recorded by the pipeline.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

from intentgate.cli import app
from intentgate.policy import EmbeddedEngine, load_policy_dir
from tests.conftest import INTENTS_DIR, POLICY_DIR
from tests.test_policy_parity import REGOPY_CHILD


def _build(tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    r = CliRunner().invoke(app, ["policy", "bundle", "-o", str(out), "--policy", str(POLICY_DIR),
                                 "--intents", str(INTENTS_DIR)])
    assert r.exit_code == 0, r.output
    return out


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(path.read_bytes()), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def test_the_bundle_holds_the_policy_the_intents_and_a_manifest(tmp_path: Path, registry) -> None:
    first, second = _build(tmp_path, "a.tar.gz"), _build(tmp_path, "b.tar.gz")
    assert first.read_bytes() == second.read_bytes()  # deterministic
    files = _members(first)
    engine = EmbeddedEngine(POLICY_DIR, registry.data_document())
    manifest = json.loads(files["/.manifest"])
    assert manifest == {"revision": engine.revision, "roots": ["intentgate"]}
    modules = {name.lstrip("/") for name in files if name.endswith(".rego")}
    assert modules == {m for m, _ in load_policy_dir(POLICY_DIR).modules}
    assert not any(name.endswith("_test.rego") for name in modules)
    data = json.loads(files["/data.json"])
    assert data["intentgate"]["intents"] == json.loads(json.dumps(registry.data_document()))


def test_a_broken_policy_writes_no_bundle(tmp_path: Path) -> None:
    broken = tmp_path / "opa" / "intentgate"
    broken.mkdir(parents=True)
    (broken / "p.rego").write_text("package intentgate\n\ndecision := {\n")
    out = tmp_path / "bundle.tar.gz"
    r = CliRunner().invoke(app, ["policy", "bundle", "-o", str(out), "--policy", str(tmp_path / "opa"),
                                 "--intents", str(INTENTS_DIR)])
    assert r.exit_code == 2 and not out.exists()


def test_the_bundle_decides_like_the_policy_dir_on_recorded_inputs(
    tmp_path: Path, registry, recorded_inputs: list[dict]
) -> None:
    files = _members(_build(tmp_path, "bundle.tar.gz"))
    modules = [(name.lstrip("/"), content.decode()) for name, content in files.items() if name.endswith(".rego")]
    job = json.dumps({"modules": modules, "data": json.loads(files["/data.json"]), "inputs": recorded_inputs})
    child = subprocess.run([sys.executable, "-c", REGOPY_CHILD], input=job, capture_output=True, text=True,
                           timeout=600)
    assert child.returncode == 0, child.stderr[-2000:]
    theirs = json.loads(child.stdout)

    embedded = EmbeddedEngine(POLICY_DIR, registry.data_document())
    ours = [embedded.evaluate_sync(inp).model_dump() for inp in recorded_inputs]
    mismatches = [(inp, a, t) for inp, a, t in zip(recorded_inputs, ours, theirs, strict=True)
                  if "decision" not in t or a != {**t["decision"], "reasons": sorted(t["decision"]["reasons"])}]
    assert not mismatches, json.dumps(mismatches[0])[:1500]
    outcomes = Counter("hold" if d["hold"] else "allow" if d["allow"] else "deny" for d in ours)
    assert min(outcomes.values()) >= 20 and set(outcomes) == {"allow", "deny", "hold"}, outcomes
