"""README tables generated from the code, so they cannot drift (cog-style blocks, checked by a test).

A block in README.md is::

    <!-- generated: NAME (python -m imgcls.docgen --write) -->
    ...table written by BLOCKS[NAME]...
    <!-- end -->

``python -m imgcls.docgen --write`` (also ``make docs`` and ``make man``) rewrites every block;
``--check`` exits 1 when one is stale; tests/test_docgen.py runs the check.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN = "<!-- generated: {name} (python -m imgcls.docgen --write) -->"
END = "<!-- end -->"
_BLOCK = re.compile(r"<!-- generated: (?P<name>[a-z0-9-]+)[^>]*-->\n(?P<body>.*?)<!-- end -->", re.S)


def _cell(text: str) -> str:
    """Markdown table cell: pipes escaped, option names and op specs as code."""
    return re.sub(r"(?<![\w`])(--[a-z][a-z-]*)", r"`\1`", text.replace("|", "\\|"))


def augment_ops_table() -> str:
    """imgcls augment's operations (imgcls.augment.OP_DEFS) and presets (imgcls.augment.PRESETS)."""
    from imgcls.augment import PRESETS, describe_pipeline, ops_table

    lines = ["| op | default | meaning |", "|---|---|---|"]
    lines += [f"| `{_cell(syntax)}` | {_cell(default)} | {_cell(meaning)} |" for syntax, default, meaning in ops_table()]
    described: list[str] = []
    done: dict[str, str] = {}
    for name, ops in PRESETS.items():
        text = describe_pipeline(ops)
        # "strong = standard + trivial": name the preset it extends, as train --augment's help does.
        base = next((b for b, b_text in reversed(done.items()) if text.startswith(b_text + ",")), None)
        described.append(f"{name} = {base} + `{text[len(done[base]) + 1:]}`" if base else f"{name} = `{text}`")
        done[name] = text
    lines.append(f"| presets | | {'; '.join(described)} |")
    return "\n".join(lines) + "\n"


def perturb_severities_table() -> str:
    """imgcls perturb's families and severities (imgcls.perturb.SEVERITY_TABLE)."""
    from imgcls.perturb import SEVERITIES, severity_rows

    levels = " / ".join(str(s) for s in SEVERITIES)
    lines = [f"| family | severity {levels} | meaning |", "|---|---|---|"]
    lines += [f"| {family} | {values} | {_cell(meaning)} |" for family, values, meaning in severity_rows()]
    return "\n".join(lines) + "\n"


BLOCKS: dict[str, Callable[[], str]] = {
    "augment-ops": augment_ops_table,
    "perturb-severities": perturb_severities_table,
}


def render(text: str, source: str = "README.md") -> str:
    """``text`` with every generated block rewritten; every block of BLOCKS must be there once."""
    seen: list[str] = []

    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in BLOCKS:
            raise ValueError(f"{source}: unknown generated block {name!r} (known: {', '.join(BLOCKS)})")
        seen.append(name)
        return f"{BEGIN.format(name=name)}\n{BLOCKS[name]()}{END}"

    new = _BLOCK.sub(replace, text)
    missing = [name for name in BLOCKS if name not in seen]
    twice = sorted({name for name in seen if seen.count(name) > 1})
    if missing or twice:
        raise ValueError(f"{source}: generated blocks missing {missing} or repeated {twice}: each needs one "
                         f"'{BEGIN.format(name='NAME')}' ... '{END}' pair")
    return new


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m imgcls.docgen",
                                     description="Rewrite or check README.md's tables generated from the code.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the generated blocks in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if a generated block is stale")
    parser.add_argument("readme", nargs="?", type=Path, default=README, help="default: the repository's README.md")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    try:
        new = render(text, str(args.readme))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.write:
        if new != text:
            args.readme.write_text(new, encoding="utf-8")
        print(f"{args.readme}: {len(BLOCKS)} generated blocks {'rewritten' if new != text else 'current'}",
              file=sys.stderr)
        return 0
    if new != text:
        print(f"stale: {args.readme} (regenerate with: make docs, or python -m imgcls.docgen --write)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
