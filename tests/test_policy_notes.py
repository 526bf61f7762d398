"""Reasons explained by the policy itself: the ``title``/``description`` of the rule that gives
a reason, read from its METADATA annotation (``intentgate.policy._notes``) as OPA attaches it.

The parser is held against OPA's own: ``opa inspect -a`` must see the same annotations on the
same rules, and ``opa check`` must refuse the blocks the parser refuses.  The reviewer pages
that show the notes are tested in test_ui.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from intentgate.errors import ConfigError
from intentgate.policy import EmbeddedEngine, ReasonNote, load_policy_dir, read_reason_notes
from tests.conftest import POLICY_DIR
from tests.opa import need_opa_binary

# the ways a METADATA block can sit before a rule, each as OPA reads it (see test_opa_agrees)
TRICKY = """\
# METADATA
# title: The package
# description: a package annotation, which explains no reason
package notes

import rego.v1

# METADATA
# title: Literal description
# description: |
#   Line one,
#   line two.
deny contains "literal" if {
	input.x > 1
}

# METADATA
# title: After a blank line

# and a plain comment: the block still annotates the next rule
deny contains "gap" if input.gap

  # METADATA
  # title: Not at column 1, so no annotation
deny contains "indented" if input.indented

# METADATA
# scope: document
# title: Held
# description: every hold_reasons rule
hold_reasons contains "held_a" if input.a

hold_reasons contains "held_b" if input.b

# METADATA
# title: Its own
hold_reasons contains "held_c" if input.c

# a plain comment first
# METADATA
# title: After a plain comment
deny contains "after_comment" if input.after

# METADATA
# title: Folded
# description: >
#   folded
#   text
deny contains `raw` if {
	input.raw
}

# METADATA
# title: yes
# description: 123
deny contains "scalars" if input.scalars

# METADATA
# title: A helper
_helper if input.h

deny contains "unannotated" if _helper

# METADATA
# title: Made at evaluation time
deny contains msg if {
	msg := sprintf("dynamic:%v", [input.d])
}
"""

EXPECTED = {
    "literal": ("Literal description", "Line one,\nline two.", "notes/tricky.rego:13"),
    "gap": ("After a blank line", "", "notes/tricky.rego:21"),
    "held_a": ("Held", "every hold_reasons rule", "notes/tricky.rego:31"),
    "held_b": ("Held", "every hold_reasons rule", "notes/tricky.rego:33"),  # the document's annotation
    "held_c": ("Its own", "", "notes/tricky.rego:37"),
    "after_comment": ("After a plain comment", "", "notes/tricky.rego:42"),
    "raw": ("Folded", "folded text", "notes/tricky.rego:49"),
    "scalars": ("yes", "123", "notes/tricky.rego:56"),  # scalars are strings, as OPA reads them
}


def tricky_dir(root: Path, text: str = TRICKY) -> Path:
    (root / "notes").mkdir(parents=True, exist_ok=True)
    (root / "notes" / "tricky.rego").write_text(text)
    return root


def test_notes_follow_opas_attachment_rules(tmp_path: Path) -> None:
    notes = read_reason_notes(load_policy_dir(tricky_dir(tmp_path)).modules)
    got = {reason: (n.title, n.description, n.location) for reason, n in notes.items()}
    assert got == EXPECTED  # no note: "indented", "unannotated", and the dynamic reason
    assert notes["held_b"].rule == "data.notes.hold_reasons" and notes["literal"].rule == "data.notes.deny"


def test_the_first_annotated_rule_explains_a_reason_given_twice() -> None:
    a = 'package p\n\nimport rego.v1\n\n# METADATA\n# title: From a\ndeny contains "twice" if input.a\n'
    b = ('package p\n\nimport rego.v1\n\ndeny contains "twice" if input.c\n\n# METADATA\n# title: From b\n'
         '# description: second\ndeny contains "twice" if input.b\n')
    notes = read_reason_notes([("p/b.rego", b), ("p/a.rego", a)])
    assert notes["twice"] == ReasonNote(title="From a", description="", rule="data.p.deny", location="p/a.rego:7")


def test_every_reason_of_the_base_policy_is_explained() -> None:
    bundle = load_policy_dir(POLICY_DIR)
    given = set()
    for _, text in bundle.modules:
        for line in text.splitlines():
            for head in ('deny contains "', 'hold_reasons contains "'):
                if line.startswith(head):
                    given.add(line[len(head):].split('"', 1)[0])
    notes = read_reason_notes(bundle.modules)
    assert given and set(notes) == given
    assert all(n.title and n.description for n in notes.values()), notes
    assert notes["refund_over_limit"].title == "Refund over the limit"
    assert notes["large_refund"].rule == "data.intentgate.hold_reasons"


REFUSED = {
    "not YAML": "# METADATA\n# title: [unclosed\n",
    "not a mapping": "# METADATA\n# just words\n",
    "a title that is not a string": "# METADATA\n# title:\n#   a: 1\n",
    "an unknown scope": "# METADATA\n# scope: everywhere\n",
    "a package scope on a rule": "# METADATA\n# scope: package\n# title: x\n",
}


@pytest.mark.parametrize("block", REFUSED.values(), ids=list(REFUSED))
def test_blocks_opa_refuses_are_refused(tmp_path: Path, block: str) -> None:
    text = f'package notes\n\nimport rego.v1\n\n{block}deny contains "x" if input.x\n'
    with pytest.raises(ConfigError, match=r"notes/tricky.rego:5: METADATA"):
        read_reason_notes(load_policy_dir(tricky_dir(tmp_path, text)).modules)
    policy = tmp_path / "policy"
    shutil.copytree(POLICY_DIR, policy)
    (policy / "intentgate" / "extra.rego").write_text(text.replace("package notes", "package intentgate"))
    with pytest.raises(ConfigError, match=r"intentgate/extra.rego:5: METADATA"):
        EmbeddedEngine(policy, {})  # the engine does not load what OPA would not


async def test_a_policy_edit_changes_the_notes_and_a_broken_one_keeps_them(tmp_path: Path) -> None:
    root = tmp_path / "policy"
    shutil.copytree(POLICY_DIR, root)
    engine = EmbeddedEngine(root, {})
    assert engine.reason_notes["refund_over_limit"].title == "Refund over the limit"
    refunds = root / "intentgate" / "refunds.rego"
    text = refunds.read_text()
    refunds.write_text(text.replace("# title: Refund over the limit", "# title: Refund above the ceiling"))
    assert await engine.reload_if_changed(force=True)
    assert engine.reason_notes["refund_over_limit"].title == "Refund above the ceiling"
    refunds.write_text(text.replace("# title: Refund over the limit", "# title: [broken"))
    assert not await engine.reload_if_changed(force=True)
    assert engine.reason_notes["refund_over_limit"].title == "Refund above the ceiling"
    await engine.aclose()


# ----- the same as OPA's own parser -------------------------------------------------------
def _opa_annotations(policy_dir: Path) -> list[tuple[str, str, str, str, str]]:
    """(file:row, rule name, scope, title, description) of each annotation `opa inspect -a` sees."""
    run = subprocess.run([need_opa_binary(), "inspect", "-a", "--format", "json", str(policy_dir)],
                         capture_output=True, text=True, timeout=60, check=True)
    out = []
    for a in json.loads(run.stdout)["annotations"]:
        file = Path(a["location"]["file"]).resolve().relative_to(policy_dir.resolve()).as_posix()
        notes = a["annotations"]
        out.append((f"{file}:{a['location']['row']}", a["path"][-1]["value"], notes["scope"],
                    notes.get("title", ""), notes.get("description", "").strip()))
    return out


@pytest.mark.opa
@pytest.mark.parametrize("which", ["base policy", "tricky"])
def test_opa_agrees(tmp_path: Path, which: str) -> None:
    policy_dir = POLICY_DIR if which == "base policy" else tricky_dir(tmp_path)
    theirs = _opa_annotations(policy_dir)
    on_rule = {where: (title, description) for where, _, scope, title, description in theirs if scope != "package"}
    documents = {(name, title, description) for _, name, scope, title, description in theirs if scope == "document"}
    notes = read_reason_notes(load_policy_dir(policy_dir).modules)
    for reason, note in notes.items():
        if note.location in on_rule:
            assert on_rule[note.location] == (note.title, note.description), reason
        else:  # explained by its document's annotation, which OPA lists at the rule that carries it
            assert (note.rule.rsplit(".", 1)[-1], note.title, note.description) in documents, reason
    # no annotation OPA sees on a deny or hold rule is missed, but the one on the rule whose
    # reason is made at evaluation time
    on_reasons = {where for where, name, scope, _, _ in theirs if scope == "rule" and name in ("deny", "hold_reasons")}
    dynamic = set() if which == "base policy" else {
        f"notes/tricky.rego:{TRICKY.splitlines().index('deny contains msg if {') + 1}"}
    assert on_reasons - {n.location for n in notes.values()} == dynamic


@pytest.mark.opa
@pytest.mark.parametrize("block", REFUSED.values(), ids=list(REFUSED))
def test_opa_refuses_the_same_blocks(tmp_path: Path, block: str) -> None:
    text = f'package notes\n\nimport rego.v1\n\n{block}deny contains "x" if input.x\n'
    run = subprocess.run([need_opa_binary(), "check", str(tricky_dir(tmp_path, text))],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0, run.stdout
