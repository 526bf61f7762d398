"""How wide a line of SVG text will be, without a browser, and breaking text into lines that fit.

The server lays SVG out before any font is known, so widths are estimates that err wide.  The
proportional estimate is DejaVu Sans Bold's advances (the widest common sans-serif, and what
``system-ui`` resolves to on many Linux desktops) rounded up into a few classes, regular text
at 93 % of bold; a character outside the table counts one em.  Monospace text is 0.61 em a
character, as in every common monospace font (DejaVu Sans Mono: 0.602 em).
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["text_width", "wrap"]

_EM = [  # (characters, advance in em, at least DejaVu Sans Bold's)
    ("ijlIJ.,·/|'\\", 0.38),
    (" f-:;", 0.43),
    ("rt_`!()[]\"*", 0.52),
    ("csz?", 0.61),
    ("abdeghknopquvxy0123456789$CEFLPSTYZ", 0.74),
    ("ABDGHKNOQRUVX^+=<>~#&{}", 0.88),
    ("mwMW@%…", 1.1),
]
_ADVANCE = {c: em for chars, em in _EM for c in chars}
_OTHER_EM = 1.0
_MONO_EM = 0.61
_REGULAR = 0.93  # regular text, of bold

# a line may break after any of these (kept at the end of the line they close)
_PIECES = re.compile(r"[^._\-/ ,·]*[._\-/ ,·]?")


def text_width(text: str, size: float, *, bold: bool = False, mono: bool = False) -> float:
    """Estimated width in px of ``text`` set at ``size`` px."""
    if mono:
        return len(text) * _MONO_EM * size
    return sum(_ADVANCE.get(c, _OTHER_EM) for c in text) * size * (1.0 if bold else _REGULAR)


def wrap(text: str, measure: Callable[[str], float], width: float, *, first: float | None = None) -> list[str]:
    """``text`` in lines no wider than ``width`` (the first line: ``first``, if given) by ``measure``.

    Lines break after a separator (``.``, ``_``, ``-``, ``/``, a space…) where one is near
    enough, else inside a word; no character is dropped but the spaces a line ends with.
    """
    lines: list[str] = []
    current = ""

    def limit() -> float:
        return first if first is not None and not lines else width

    for piece in (p for p in _PIECES.findall(text) if p):
        if measure((current + piece).rstrip()) <= limit():
            current += piece
            continue
        if current.strip():
            lines.append(current.rstrip())
        current = ""
        while measure(piece.rstrip()) > limit():  # one word wider than a line: cut it
            cut = 1
            while cut < len(piece) and measure(piece[:cut + 1]) <= limit():
                cut += 1
            lines.append(piece[:cut])
            piece = piece[cut:]
        current = piece
    if current.strip() or not lines:
        lines.append(current.rstrip())
    return lines
