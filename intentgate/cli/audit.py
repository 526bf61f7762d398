"""``intentgate audit``: verify the decision log against its signed checkpoints, seal it, prove
entries and prefixes (RFC 9162), and check such proofs without the database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.table import Table

from ..errors import GatewayError
from .common import ConfigOption, config_or_exit, console, database_or_exit, err_console, run

if TYPE_CHECKING:
    from ..config import GatewayConfig

__all__ = ["audit_app"]

audit_app = typer.Typer(no_args_is_help=True)

KeyOption = Annotated[list[str] | None, typer.Option(
    "--key", help="audit verifier key (<name>+<hash>+<key>, from /.well-known/intentgate-audit-keys) to trust "
                  "instead of the key files in the data directory; repeatable", show_default=False)]
CheckpointsOption = Annotated[list[Path] | None, typer.Option(
    "--checkpoints", help="published checkpoints to hold the log to: a file sink's JSON lines, a directory of "
                          "them or of .note files; repeatable (default: the file sinks in the config)",
    show_default=False)]


def _fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _keys(cfg: GatewayConfig | None, given: list[str] | None) -> list[tuple[str, Any]] | None:
    """The keys checkpoints must be signed with: those given, else the audit key directory's."""
    from ..checkpoints import CheckpointError, parse_verifier_key
    from ..keys import KeySet

    if given:
        try:
            return [parse_verifier_key(k) for k in given]
        except CheckpointError as exc:
            _fail(exc.message)
    if cfg is None:
        return None
    try:
        public = KeySet(cfg.audit_keys_dir, retire_public=True).all_public()
    except GatewayError as exc:
        _fail(exc.message)
    if not len(public):
        return None
    origin = cfg.audit.checkpoints.origin
    return [(origin, key) for kid in public.kids() if (key := public.get(kid)) is not None]


def _store(cfg: GatewayConfig) -> Any:
    from ..store import Store

    database_or_exit(cfg)
    try:
        return Store.open(cfg.database_url, timeout=cfg.store.timeout_seconds, migrate=cfg.store.migrate)
    except GatewayError as exc:
        _fail(exc.message)


@audit_app.command("verify")
def verify(config: ConfigOption = None, checkpoints: CheckpointsOption = None, key: KeyOption = None) -> None:
    """Check every decision, the Merkle tree and every checkpoint; exit 1 on any rewrite.

    Each row must match its hash, each leaf its row, and the tree recomputed from the leaves
    must give the root of every stored and every published checkpoint at its size: an edited,
    inserted, removed or reordered entry, or a truncated log, under a checkpoint published
    before the change is found even if every hash in the database was recomputed.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..checkpoints import CheckpointError, read_published

    cfg = config_or_exit(config)
    sources = list(checkpoints or [s.file for s in cfg.audit.checkpoints.sinks if s.file is not None])
    published: list[str] = []
    for source in sources:
        if not source.exists():
            _fail(f"{source}: no published checkpoints there")
        try:
            published += read_published(source)
        except CheckpointError as exc:
            _fail(exc.message)
    keys = _keys(cfg, key)
    store = _store(cfg)
    try:
        with Progress(
            TextColumn("verifying decisions"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err_console, transient=True,
        ) as progress:
            bar = progress.add_task("verify", total=None)
            report = store.verify_log(keys=keys, origin=cfg.audit.checkpoints.origin, published=published,
                                      max_unsealed=cfg.audit.checkpoints.max_unsealed_seconds,
                                      progress=lambda n: progress.advance(bar, n))
    finally:
        store.close()
    if keys is None and report.checkpoints:
        report.notes.append("no audit key found: stored checkpoints' signatures were not checked")
    for problem in report.problems:
        console.print(f"[red]{problem}[/red]", highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    summary = (f"{report.checked} decisions, {report.sealed} sealed into the tree, {report.unsealed} not yet; "
               f"{report.checkpoints} stored and {report.published} published checkpoint(s) checked")
    if report.ok:
        console.print(f"audit log OK: {summary}", highlight=False, soft_wrap=True)
    else:
        console.print(f"[red]audit log BROKEN[/red]: {len(report.problems)} problem(s); {summary}", highlight=False,
                      soft_wrap=True)
        raise typer.Exit(1)


@audit_app.command("seal")
def seal(config: ConfigOption = None) -> None:
    """Seal the decisions waiting into the tree and sign a checkpoint now (a serving gateway does
    this by itself every audit.checkpoints.every_seconds), then publish it to the sinks."""
    from ..checkpoints import AuditSigner
    from ..clock import SystemClock
    from ..runtime import sealing_horizon
    from ..sealer import Sealer

    cfg = config_or_exit(config)
    store = _store(cfg)
    try:
        signer = AuditSigner.open(cfg.audit_keys_dir, cfg.audit.checkpoints.origin)
        checkpoint = run(Sealer(store, signer, cfg.audit.checkpoints, SystemClock(),
                                horizon=sealing_horizon(cfg)).seal_now())
    finally:
        store.close()
    if checkpoint is None:
        console.print("nothing to seal: every decision is in the tree")
    else:
        console.print(f"checkpoint signed: tree size {checkpoint.size}, root {checkpoint.root.hex()}", highlight=False)


@audit_app.command("checkpoints")
def list_checkpoints(config: ConfigOption = None,
                     limit: Annotated[int, typer.Option(min=1, max=10_000, help="newest N")] = 20) -> None:
    """List the stored checkpoints, newest first."""
    from datetime import UTC, datetime

    cfg = config_or_exit(config)
    store = _store(cfg)
    try:
        rows = run(store.checkpoints(limit=limit))
    finally:
        store.close()
    table = Table("tree size", "signed at", "root", "key")
    for row in rows:
        table.add_row(str(row["size"]), datetime.fromtimestamp(row["at"], tz=UTC).isoformat(timespec="seconds"), row["root"][:16] + "…", row["key_id"][:12] + "…")
    console.print(table)
    if not rows:
        console.print("no checkpoint yet: the gateway signs one within audit.checkpoints.every_seconds of serving, "
                      "or run `intentgate audit seal`")


def _checkpoint(store: Any, size: int | None) -> dict[str, Any]:
    found = run(store.checkpoints(size=size, limit=1))
    if not found:
        _fail("no checkpoint yet (run `intentgate audit seal`)" if size is None else f"no checkpoint of size {size}")
    return found[0]


@audit_app.command("prove")
def prove(decision_id: Annotated[str, typer.Argument(help="the decision to prove")],
          config: ConfigOption = None,
          size: Annotated[int | None, typer.Option(help="against the checkpoint of this tree size (default: "
                                                        "the newest)", show_default=False)] = None) -> None:
    """Print an RFC 9162 inclusion proof of one decision against a signed checkpoint (JSON);
    `intentgate audit check-proof` or intentgate.auditproof.verify_proof checks it."""
    from ..merkle import inclusion_proof

    cfg = config_or_exit(config)
    store = _store(cfg)
    try:
        found = run(store.leaf_of_decision(decision_id))
        if found is None:
            _fail(f"decision {decision_id} is unknown or not sealed into the tree yet")
        index, leaf, decision = found
        checkpoint = _checkpoint(store, size)
        if index >= checkpoint["size"]:
            _fail(f"decision {decision_id} is leaf {index}, after the checkpoint of size {checkpoint['size']}")
        leaves = run(store.leaf_hashes(checkpoint["size"]))
    finally:
        store.close()
    doc = {"kind": "inclusion", "origin": cfg.audit.checkpoints.origin, "decision": decision.model_dump(mode="json"),
           "leaf_index": index, "tree_size": checkpoint["size"], "leaf_hash": leaf,
           "inclusion_path": [h.hex() for h in inclusion_proof(leaves, index, checkpoint["size"])],
           "checkpoint": checkpoint["note"]}
    print(json.dumps(doc, indent=2))


@audit_app.command("consistency")
def consistency(old: Annotated[int, typer.Argument(help="tree size of the older checkpoint")],
                new: Annotated[int | None, typer.Argument(help="tree size of the newer one (default: the newest)",
                                                          show_default=False)] = None,
                config: ConfigOption = None) -> None:
    """Print an RFC 9162 consistency proof between two stored checkpoints (JSON): the older
    tree is a prefix of the newer one."""
    from ..merkle import consistency_proof

    cfg = config_or_exit(config)
    store = _store(cfg)
    try:
        first, second = _checkpoint(store, old), _checkpoint(store, new)
        if first["size"] > second["size"]:
            _fail(f"checkpoint {first['size']} is newer than {second['size']}")
        leaves = run(store.leaf_hashes(second["size"]))
    finally:
        store.close()
    doc = {"kind": "consistency", "origin": cfg.audit.checkpoints.origin,
           "first": {"size": first["size"], "root": first["root"], "checkpoint": first["note"]},
           "second": {"size": second["size"], "root": second["root"], "checkpoint": second["note"]},
           "consistency_path": [h.hex() for h in consistency_proof(leaves, first["size"], second["size"])]}
    print(json.dumps(doc, indent=2))


@audit_app.command("check-proof")
def check_proof(proof: Annotated[Path, typer.Argument(help="a proof document from `audit prove` or "
                                                            "`audit consistency` ('-': stdin)")],
                key: KeyOption = None, config: ConfigOption = None) -> None:
    """Check a proof with the audit public keys only (no database): exit 1 if it does not hold."""
    import sys

    from ..auditproof import verify_proof
    from ..checkpoints import CheckpointError

    try:
        doc = json.loads(sys.stdin.read() if str(proof) == "-" else proof.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        _fail(f"{proof}: not a readable JSON proof ({exc})")
    keys = _keys(None if key else config_or_exit(config), key)
    if not keys:
        _fail("no audit key to check with: pass --key (from /.well-known/intentgate-audit-keys)")
    try:
        what = verify_proof(doc, keys)
    except CheckpointError as exc:
        console.print(f"[red]proof FAILED[/red]: {exc.message}", highlight=False)
        raise typer.Exit(1) from exc
    console.print(f"proof OK: {what}", highlight=False)

