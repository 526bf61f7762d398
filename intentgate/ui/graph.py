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

A box shows its step's whole name and tool: a column is as wide as its widest text (up to
``MAX_W``), text wider than that wraps onto more lines, and a row is as tall as its tallest
box.  Widths are estimated on the server (``textwidth``), erring wide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..review import GraphStep, IntentGraph
from .textwidth import text_width, wrap

__all__ = ["Edge", "Frame", "Layout", "Line", "Node", "layout", "name_width", "to_dot", "to_mermaid",
           "tool_width"]

W, H = 176, 58  # the smallest box
MAX_W = 320  # the widest box: longer text wraps
PAD = 10  # text inset from a box's left and right edges
GX, GY = 64, 28  # gaps between layers / rows
LEFT, TOP = 56, 56  # room for the start marker / above the boxes for jumps
JUMP = 40  # height of a jump's arc over the boxes
LOOP = 34  # depth of an arrow curving under the boxes
# text sizes (px, as style.css sets them) and baselines from a box's top
NAME_PX, TOOL_PX, BADGE_PX, FRAME_PX = 14, 12, 12, 12
NAME_FIRST, NAME_NEXT, TOOL_GAP, TOOL_NEXT, BOTTOM = 23, 18, 20, 16, 15


def name_width(text: str) -> float:
    """A step name's width (bold sans-serif)."""
    return text_width(text, NAME_PX, bold=True)


def tool_width(text: str) -> float:
    """A tool line's width (monospace)."""
    return text_width(text, TOOL_PX, mono=True)


def _badge_room(badges: str) -> float:
    return text_width(badges, BADGE_PX, bold=True) + 8 if badges else 0.0


def _ellipsized(text: str, width: float) -> str:
    """``text`` cut to ``width`` with "…" (a group's frame label: the full name is its tooltip)."""
    if text_width(text, FRAME_PX) <= width:
        return text
    while text and text_width(text + "…", FRAME_PX) > width:
        text = text[:-1]
    return text + "…"


@dataclass
class Line:
    """One line of a box's text: ``cls`` is ``name`` or ``tool``, ``dy`` its baseline from the top."""

    cls: str
    text: str
    dy: int


@dataclass
class Node:
    name: str
    tool: str
    x: int
    y: int
    classes: str
    label: str  # the step's name
    sublabel: str  # its tool, and its flags after a " · "
    badges: str
    title: str
    w: int = W
    h: int = H
    lines: list[Line] = field(default_factory=list)
    flags: str = ""

    def natural_width(self) -> float:
        """How wide the box would be with every text on one line."""
        return max(name_width(self.label) + _badge_room(self.badges), tool_width(self.sublabel)) + 2 * PAD

    def fit(self, w: int) -> None:
        """Take width ``w``; break the text into lines that fit it, and take the height they need."""
        room = w - 2 * PAD
        names = wrap(self.label, name_width, room, first=room - _badge_room(self.badges))
        tools = wrap(self.tool, tool_width, room) if self.tool else []
        if self.flags:
            joined = f"{tools[-1]} · {self.flags}" if tools else self.flags
            if tool_width(joined) <= room:
                tools[-1:] = [joined]
            else:
                tools += wrap(self.flags, tool_width, room)
        self.lines = [Line("name", text, NAME_FIRST + n * NAME_NEXT) for n, text in enumerate(names)]
        below = self.lines[-1].dy + TOOL_GAP
        self.lines += [Line("tool", text, below + n * TOOL_NEXT) for n, text in enumerate(tools)]
        self.w, self.h = w, max(H, self.lines[-1].dy + BOTTOM)

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
    title: str = ""


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
    pad: int = PAD  # text inset in a box


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
    cells: dict[str, tuple[int, int]] = {}  # step -> (layer, row)
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
        taken = " ".join(f"#{p}" for p in step.taken)
        # a step taken often: the box's corner shows its first positions and its last, the tooltip all
        badges = taken if len(step.taken) <= 4 else f"#{step.taken[0]} #{step.taken[1]} … #{step.taken[-1]}"
        if step.free:
            classes.append("free")
        flags = [f for f, on in (("needs approval", step.approval == "required"), ("end", step.terminal),
                                 ("any time", step.free)) if on]
        title = f"{step.name}: {step.tool}" + (f" — taken at {taken}" if taken else "") + (
            " — attempted by this decision" if step.attempted else "")
        nodes[step.name] = Node(
            name=step.name, tool=step.tool, x=0, y=0, classes=" ".join(classes), label=step.name,
            sublabel=step.tool + (f" · {', '.join(flags)}" if flags else ""), badges=badges, title=title,
            flags=", ".join(flags),
        )
        cells[step.name] = (layer, row)
    if graph.attempted and not graph.attempted_known:
        layer = max(depth.values(), default=-1) + 1
        nodes[graph.attempted] = Node(
            name=graph.attempted, tool="", x=0, y=0, classes=f"node attempted unknown {outcome}",
            label=graph.attempted, sublabel="not in this intent", badges="", flags="not in this intent",
            title=f"{graph.attempted}: not a step of this intent — attempted by this decision",
        )
        cells[graph.attempted] = (layer, rows.get(layer, 0))
    _place(nodes, cells)

    frames = []
    for name, members in graph.groups.items():
        boxes = [nodes[m] for m in members if m in nodes]
        if boxes:
            x0, y0 = min(b.x for b in boxes) - 10, min(b.y for b in boxes) - 22
            x1, y1 = max(b.x + b.w for b in boxes) + 10, max(b.y + b.h for b in boxes) + 10
            label = f"{name} (any order)"
            frames.append(Frame(x=x0, y=y0, w=x1 - x0, h=y1 - y0, label=_ellipsized(label, x1 - x0 - 20), title=label))

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


def _place(nodes: dict[str, Node], cells: dict[str, tuple[int, int]]) -> None:
    """Size every column to its widest box (up to ``MAX_W``), every row to its tallest, and put
    each box in its cell."""
    widths: dict[int, int] = {}
    for name, (layer, _) in cells.items():
        wanted = min(MAX_W, max(W, int(nodes[name].natural_width() + 0.999)))
        widths[layer] = max(widths.get(layer, W), wanted)
    heights: dict[int, int] = {}
    for name, (layer, row) in cells.items():
        nodes[name].fit(widths[layer])
        heights[row] = max(heights.get(row, H), nodes[name].h)
    for name, (layer, row) in cells.items():
        node = nodes[name]
        node.x = LEFT + sum(widths.get(c, W) + GX for c in range(layer))
        node.y = TOP + sum(heights.get(r, H) + GY for r in range(row))
        node.h = heights[row]


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
