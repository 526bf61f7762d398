"""An OPA bundle of the policy dir plus the intents, for an OPA sidecar that pulls bundles.

The gateway pushes its policy to OPA itself by default (``policy.push_policy``).  Where OPA
must get its policy from a bundle server instead (production: signed bundles, decision logs,
no write access to OPA's API), ``intentgate policy bundle`` writes the same content as a
bundle: every non-test module at its path, one ``data.json`` at the root holding the data
documents with ``data.intentgate.intents`` set, and a ``.manifest`` whose revision is the
gateway's own policy revision and whose roots are the packages' and data's top-level names.
The archive is deterministic (sorted, zero mtimes): the same files give the same bytes.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

from ._bundle import load_policy_dir

__all__ = ["build_opa_bundle"]

_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)


def build_opa_bundle(policy_dir: Path | str, intents_doc: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """The bundle (``.tar.gz`` bytes) and its manifest."""
    bundle = load_policy_dir(policy_dir)
    data = bundle.data_with(intents_doc)
    roots = set(data)
    for _, text in bundle.modules:
        if m := _PACKAGE.search(text):
            roots.add(m.group(1))
    manifest = {"revision": bundle.revision(intents_doc), "roots": sorted(roots)}
    files = [(".manifest", json.dumps(manifest, sort_keys=True).encode()),
             ("data.json", json.dumps(data, sort_keys=True, ensure_ascii=False).encode())]
    files += [(module_id, text.encode()) for module_id, text in sorted(bundle.modules)]
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, content in files:
            info = tarfile.TarInfo(f"/{name}")
            info.size, info.mtime, info.mode = len(content), 0, 0o644
            tar.addfile(info, io.BytesIO(content))
    return raw.getvalue(), manifest
