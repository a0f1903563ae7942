"""The README's configuration table, made from the settings' declarations.

``python -m config.table`` writes it between the README's markers; ``--check`` (``make lint``)
fails when the README's copy is not what the declarations make.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from config.settings import ELSEWHERE, REQUIRED, ROOT, SAME, Declared, Settings, declared

README = ROOT / "README.md"
BEGIN, END = "<!-- settings table: python -m config.table -->", "<!-- end of settings table -->"


def shown(value: Any) -> str:
    """Return a value as the table writes it."""
    if value is None:
        return "unset"
    if value in ("", ()):
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return f"`{','.join(value)}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _default(d: Declared) -> str:
    assert d.shown or not callable(d.default), f"{d.variable}: a computed default needs `shown`"
    also = f" (or `{d.fallback}`)" if d.fallback else ""
    return (d.shown or shown(d.default)) + also


def _production(d: Declared) -> str:
    if d.shown_production:
        return d.shown_production
    if d.production is SAME:
        return ""
    return "required" if d.production is REQUIRED else shown(d.production)


def rows() -> list[tuple[list[str], list[str], list[str], str]]:
    """Return the table's rows: variables, their defaults, production's rules, what they do."""
    made: list[tuple[list[str], list[str], list[str], str]] = []
    for f in dataclasses.fields(Settings):
        d = declared(f.name)
        entry = ([f"`{d.variable}`"], [_default(d)], [_production(d)], d.help)
        if d.help or not made:
            made.append(entry)
            leader = d
        else:  # on the row above: the same words for both; the first's `shown` speaks for the row
            made[-1][0].extend(entry[0])
            if d.shown or not leader.shown:
                made[-1][1].extend(entry[1])
            made[-1][2].extend(entry[2])
    for name, (default, help) in ELSEWHERE.items():
        if help or not made:
            made.append(([f"`{name}`"], [default], [""], help))
        else:
            made[-1][0].append(f"`{name}`")
            made[-1][1].append(default)
    return made


def _join(cells: list[str]) -> str:
    """One cell for a row's settings: one value when every setting of it has the same."""
    return cells[0] if len(set(cells)) == 1 else ", ".join(c or "as above" for c in cells)


def table() -> str:
    """Return the Markdown table, with its markers."""
    lines = [BEGIN, "| Variable | Default (development) | Production | What it does |", "|---|---|---|---|"]
    for names, defaults, production, help in rows():
        lines.append(f"| {', '.join(names)} | {_join(defaults)} | {_join(production)} | {help} |")
    return "\n".join([*lines, END])


def main(argv: list[str] | None = None) -> int:
    """Write the README's table, or with ``--check`` say whether it is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the README's table is stale")
    args = parser.parse_args(argv)
    text = README.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    current = text[:start] + table() + text[end:]
    if args.check:
        if current != text:
            print("README.md: the settings table is stale; run python -m config.table", file=sys.stderr)
            return 1
        return 0
    README.write_text(current)
    return 0


if __name__ == "__main__":
    sys.exit(main())
