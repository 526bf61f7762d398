"""An intent's graph laid out for SVG, on the server.

Steps are boxes in layers from left to right by their distance (in ``next`` edges) from the
start steps; steps no start step reaches come last; free steps (callable at any point) sit in
a row of their own under the graph, marked "any time"; the steps of a group (any order) are
framed together, with the group's name.  ``next`` edges are arrows: forward edges
between layers, edges back to the same or an earlier layer curve under the boxes.  Steps the
task had taken by then and the edges it followed are marked ``taken`` (steps it took only
later: ``later``); the attempted step is marked
``attempted`` (with the decision's outcome), and when the attempt did not follow a ``next``
edge, a dashed arrow shows the jump.  The template draws it; this module only computes where.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..review import GraphStep, IntentGraph

__all__ = ["Edge", "Frame", "Layout", "Node", "layout", "to_dot", "to_mermaid"]

W, H = 176, 58  # box
GX, GY = 64, 28  # gaps between layers / rows
LEFT, TOP = 56, 56  # room for the start marker / above the boxes for jumps
JUMP = 40  # height of a jump's arc over the boxes
LOOP = 34  # depth of an arrow curving under the boxes
MAX_LABEL = 24


def _short(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


@dataclass
class Node:
    name: str
    tool: str
    x: int
    y: int
    classes: str
    label: str
    sublabel: str
    badges: str
    title: str
    w: int = W
    h: int = H

    @property
    def cx(self) -> int:
        return self.x + self.w // 2

    @property
    def cy(self) -> int:
        return self.y + self.h // 2


@dataclass
class Edge:
    d: str
    classes: str
    title: str

    @property
    def marker(self) -> str:
        """The arrowhead (one per colour: SVG markers do not inherit the line's colour)."""
        for kind in ("jump", "taken"):
            if kind in self.classes.split():
                return f"arrow-{kind}"
        return "arrow"


@dataclass
class Frame:
    """A group's frame around its steps."""

    x: int
    y: int
    w: int
    h: int
    label: str


@dataclass
class Layout:
    width: int
    height: int
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)
    starts: list[tuple[int, int]] = field(default_factory=list)  # start marker → box (x, y) points
    marker: tuple[int, int] = (0, 0)
    has_free: bool = False


def _layers(graph: IntentGraph) -> dict[str, int]:
    by_name = {s.name: s for s in graph.steps}
    depth: dict[str, int] = {}
    frontier = [s for s in graph.start if s in by_name]
    for s in frontier:
        depth[s] = 0
    while frontier:
        nxt: list[str] = []
        for name in frontier:
            for target in by_name[name].next:
                if target in by_name and target not in depth:
                    depth[target] = depth[name] + 1
                    nxt.append(target)
        frontier = nxt
    last = max(depth.values(), default=-1) + 1
    for s in graph.steps:
        depth.setdefault(s.name, last)
    return depth


def _forward(a: Node, b: Node) -> str:
    x1, y1, x2, y2 = a.x + a.w, a.cy, b.x, b.cy
    mid = (x1 + x2) // 2
    return f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2 - 2},{y2}"


def _under(a: Node, b: Node, depth: int) -> str:
    if a is b:  # a step that may repeat: a loop under its own box
        x1, x2, y = a.x + a.w * 2 // 3, a.x + a.w // 3, a.y + a.h
        return f"M{x1},{y} C{x1 + 20},{y + depth} {x2 - 20},{y + depth} {x2},{y + 2}"
    x1, y1, x2, y2 = a.cx + 12, a.y + a.h, b.cx - 12, b.y + b.h
    bottom = max(y1, y2) + depth
    return f"M{x1},{y1} C{x1},{bottom} {x2},{bottom} {x2},{y2 + 2}"


def layout(graph: IntentGraph, outcome: str) -> Layout:
    """Where every box and arrow of ``graph`` goes; ``outcome`` styles the attempted step."""
    depth = _layers(graph)
    rows: dict[int, int] = {}
    nodes: dict[str, Node] = {}
    ordered = [s for s in graph.steps if not s.free]
    free = [s for s in graph.steps if s.free]
    free_row = 0
    for step in ordered + free:
        if step.free:  # a row of their own, under everything else
            layer = free.index(step)
            if layer == 0:
                free_row = max(rows.values(), default=0)
            row = free_row
        else:
            layer = depth[step.name]
            row = rows.get(layer, 0)
            rows[layer] = row + 1
        classes = ["node"]
        then = {p.relation for p in graph.path if p.step == step.name}
        if then & {"before", "this"}:  # "this": an allowed call took the step
            classes.append("taken")
        elif "after" in then:
            classes.append("later")
        if step.attempted:
            classes += ["attempted", outcome]
        if step.start:
            classes.append("start")
        badges = " ".join(f"#{p}" for p in step.taken)
        if step.free:
            classes.append("free")
        flags = [f for f, on in (("needs approval", step.approval == "required"), ("end", step.terminal),
                                 ("any time", step.free)) if on]
        title = f"{step.name}: {step.tool}" + (f" — taken at {badges}" if badges else "") + (
            " — attempted by this decision" if step.attempted else "")
        nodes[step.name] = Node(
            name=step.name, tool=step.tool, x=LEFT + layer * (W + GX), y=TOP + row * (H + GY),
            classes=" ".join(classes), label=_short(step.name),
            sublabel=_short(step.tool) + (f" · {', '.join(flags)}" if flags else ""), badges=badges, title=title,
        )
    if graph.attempted and not graph.attempted_known:
        layer = max(depth.values(), default=-1) + 1
        row = rows.get(layer, 0)
        nodes[graph.attempted] = Node(
            name=graph.attempted, tool="", x=LEFT + layer * (W + GX), y=TOP + row * (H + GY),
            classes=f"node attempted unknown {outcome}", label=_short(graph.attempted), sublabel="not in this intent",
            badges="",
            title=f"{graph.attempted}: not a step of this intent — attempted by this decision",
        )

    frames = []
    for name, members in graph.groups.items():
        boxes = [nodes[m] for m in members if m in nodes]
        if boxes:
            x0, y0 = min(b.x for b in boxes) - 10, min(b.y for b in boxes) - 22
            x1, y1 = max(b.x + b.w for b in boxes) + 10, max(b.y + b.h for b in boxes) + 10
            frames.append(Frame(x=x0, y=y0, w=x1 - x0, h=y1 - y0, label=_short(f"{name} (any order)")))

    followed = {(a.step, b.step) for a, b in zip(graph.path, graph.path[1:], strict=False)
                if a.relation != "after" and b.relation != "after"}
    edges: list[Edge] = []
    back = 0
    for step in graph.steps:
        a = nodes[step.name]
        for target in step.next:
            b = nodes.get(target)
            if b is None:
                continue
            cls = "edge taken" if (step.name, target) in followed else "edge"
            if depth[target] > depth[step.name]:
                d = _forward(a, b)
            else:
                back += 1
                d = _under(a, b, LOOP + 10 * (back - 1))
            edges.append(Edge(d=d, classes=cls, title=f"{step.name} → {target}"))

    free_names = {s.name for s in free}
    before = [p for p in graph.path if p.relation == "before" and p.step not in free_names]
    last = before[-1].step if before else None
    group = next((s.group for s in graph.steps if s.name == last), None)
    allowed = {t for s in graph.steps if s.name == last for t in s.next} if last else set(graph.start)
    allowed |= free_names | set(graph.groups.get(group or "", []))
    if graph.attempted and graph.attempted in nodes and graph.attempted not in allowed:
        # the attempt followed no `next` edge: a dashed arc over the boxes, from the last step
        # taken (or from the start marker) to the attempted step
        b = nodes[graph.attempted]
        a_x, a_y = (nodes[last].cx, nodes[last].y) if last in nodes else (LEFT - 38, TOP + H // 2 - 8)
        top = min(a_y, b.y) - JUMP
        edges.append(Edge(d=f"M{a_x},{a_y} C{a_x},{top} {b.cx},{top} {b.cx},{b.y - 2}",
                          classes=f"edge jump {outcome}", title=f"attempted: {last or 'start'} → {graph.attempted}"))

    marker = (LEFT - 38, TOP + H // 2)
    starts = [(n.x - 2, n.cy) for n in nodes.values() if n.name in graph.start]
    width = max((n.x + n.w for n in nodes.values()), default=LEFT) + 24
    height = max((n.y + n.h for n in nodes.values()), default=TOP) + (LOOP + 10 * back + 24 if back else 24)
    return Layout(width=width, height=height, nodes=list(nodes.values()), edges=edges, frames=frames, starts=starts,
                  marker=marker, has_free=bool(free))


def _flags(step: GraphStep) -> list[str]:
    return [f for f, on in (("needs approval", step.approval == "required"), ("end", step.terminal),
                            ("any time", step.free), (f"up to {step.max_calls} calls", step.max_calls > 1)) if on]


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(graph: IntentGraph) -> str:
    """The graph in Graphviz DOT: a group is a cluster, a free step a dashed box."""
    lines = [f"digraph {_dot_id(graph.intent)} {{", "  rankdir=LR;",
             f"  label={_dot_id(f'{graph.intent} v{graph.version}')}; labelloc=t;",
             '  node [shape=box, style="rounded", fontname="Helvetica"];',
             '  "__start" [shape=circle, label="", width=0.2, style=filled, fillcolor=black];']

    def node(step: GraphStep, indent: str) -> str:
        label = "\\n".join([step.name, step.tool, *_flags(step)]).replace('"', '\\"')
        style = ', style="rounded,dashed"' if step.free else ""
        return f'{indent}{_dot_id(step.name)} [label="{label}"{style}];'

    grouped = {m for members in graph.groups.values() for m in members}
    for n, (name, members) in enumerate(graph.groups.items()):
        lines.append(f"  subgraph cluster_{n} {{")
        lines.append(f'    label={_dot_id(f"{name} (any order)")}; style=dashed;')
        lines += [node(s, "    ") for s in graph.steps if s.name in members]
        lines.append("  }")
    lines += [node(s, "  ") for s in graph.steps if s.name not in grouped]
    lines += [f'  "__start" -> {_dot_id(s)};' for s in graph.start]
    lines += [f"  {_dot_id(s.name)} -> {_dot_id(t)};" for s in graph.steps for t in s.next]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def to_mermaid(graph: IntentGraph) -> str:
    """The graph as a Mermaid flowchart: a group is a subgraph, a free step a rounded box."""
    ids = {s.name: f"s{n}" for n, s in enumerate(graph.steps)}
    lines = ["flowchart LR", "  start(( ))"]

    def node(step: GraphStep, indent: str) -> str:
        label = _mermaid_text("<br/>".join([step.name, step.tool, *_flags(step)]))
        return f'{indent}{ids[step.name]}("{label}")' if step.free else f'{indent}{ids[step.name]}["{label}"]'

    grouped = {m for members in graph.groups.values() for m in members}
    for n, (name, members) in enumerate(graph.groups.items()):
        lines.append(f'  subgraph g{n}["{_mermaid_text(name)} (any order)"]')
        lines += [node(s, "    ") for s in graph.steps if s.name in members]
        lines.append("  end")
    lines += [node(s, "  ") for s in graph.steps if s.name not in grouped]
    lines += [f"  start --> {ids[s]}" for s in graph.start if s in ids]
    lines += [f"  {ids[s.name]} --> {ids[t]}" for s in graph.steps for t in s.next if t in ids]
    return "\n".join(lines) + "\n"
