"""Generate the man pages from the click tree plus hand-written sections.

Options come from the commands themselves, so the pages cannot drift from ``--help``.
Hand-written DESCRIPTION, EXAMPLES, EXIT STATUS, ENVIRONMENT, FILES ... live in
``man/src/<page>.md``: ``## SECTION`` headings, paragraphs separated by blank lines,
example commands on lines starting with ``$ `` (the test suite runs them), and
indented lines kept verbatim.

    python -m imgcls.manpage --write man     # regenerate
    python -m imgcls.manpage --check man     # exit 1 when committed pages are stale
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from imgcls import __version__

SECTION_ORDER = ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "EXAMPLES", "EXIT STATUS",
                 "ENVIRONMENT", "FILES", "SEE ALSO"]


def roff_escape(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def parse_source(text: str) -> dict[str, str]:
    """Split a hand-written source into {SECTION: body}."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"^## +(.+?)\s*$", line)
        if match:
            current = match.group(1).upper()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {k: "\n".join(v).strip("\n") for k, v in sections.items()}


def examples_of(text: str) -> list[str]:
    """The ``$ `` command lines of a source's EXAMPLES section (run by the tests)."""
    body = parse_source(text).get("EXAMPLES", "")
    return [line.strip()[2:] for line in body.splitlines() if line.strip().startswith("$ ")]


def body_to_roff(body: str) -> str:
    """Paragraphs, ``$ `` examples and indented verbatim blocks to roff."""
    out: list[str] = []
    paragraph: list[str] = []
    verbatim: list[str] = []

    def flush_paragraph() -> None:
        if paragraph:
            out.append(".PP")
            out.append(roff_escape(" ".join(s.strip() for s in paragraph)))
            paragraph.clear()

    def flush_verbatim() -> None:
        if verbatim:
            out.append(".PP\n.RS 4\n.nf")
            out.extend(roff_escape(v) for v in verbatim)
            out.append(".fi\n.RE")
            verbatim.clear()

    for line in body.splitlines():
        stripped = line.strip()
        if not stripped:
            flush_paragraph()
            flush_verbatim()
        elif stripped.startswith("$ ") or stripped.startswith("# ") or line[:1].isspace():
            flush_paragraph()
            verbatim.append(line[4:] if line.startswith("    ") else stripped)
        elif stripped.startswith("- "):
            flush_paragraph()
            flush_verbatim()
            out.append(".IP \\(bu 2")
            out.append(roff_escape(stripped[2:]))
        else:
            flush_verbatim()
            paragraph.append(stripped)
    flush_paragraph()
    flush_verbatim()
    return "\n".join(out)


def _help_text(command: click.Command) -> str:
    import inspect

    text = inspect.cleandoc((command.help or "").split("\f")[0])
    return "\n".join(line for line in text.splitlines() if line.strip() != "\\b")


def options_roff(command: click.Command, ctx: click.Context) -> str:
    out = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        # click >= 8.2 gives arguments a help record with empty help: SYNOPSIS already names them
        if record is None or (isinstance(param, click.Argument) and not record[1]):
            continue
        opts, help_text = record
        out.append(".TP")
        out.append("\\fB" + roff_escape(opts) + "\\fR")
        out.append(roff_escape(help_text))
    return "\n".join(out)


def arguments_synopsis(command: click.Command, ctx: click.Context) -> str:
    pieces = ["[OPTIONS]"]
    for param in command.get_params(ctx):
        if isinstance(param, click.Argument):
            pieces.append(param.make_metavar(ctx))
    return " ".join(pieces)


def render_page(name: str, section: int, summary: str, sections: dict[str, str]) -> str:
    title = name.upper()
    head = [
        f'.TH "{roff_escape(title)}" "{section}" "" "imgcls {__version__}" "imgcls manual"',
        ".SH NAME",
        f"{roff_escape(name)} \\- {roff_escape(summary)}",
    ]
    custom = [k for k in sections if k not in SECTION_ORDER]  # in the order the source gives them
    for key in SECTION_ORDER[1:3] + custom + SECTION_ORDER[3:]:
        body = sections.get(key)
        if body:
            head.append(f".SH {key}")
            head.append(body)
    return "\n".join(head) + "\n"


def _subcommand(group: click.Group, ctx: click.Context, name: str) -> click.Command:
    command = group.get_command(ctx, name)
    if command is None:  # list_commands named it: the command module failed to define one
        raise LookupError(f"imgcls {name}: no such command")
    return command


def generate(src_dir: Path) -> dict[str, str]:
    """{file name: roff text} for imgcls.1, every subcommand and the manifest format."""
    from imgcls.cli import cli

    pages: dict[str, str] = {}
    root_ctx = click.Context(cli, info_name="imgcls", **cli.context_settings)
    commands = cli.list_commands(root_ctx)

    def hand_written(page: str) -> dict[str, str]:
        path = src_dir / f"{page}.md"
        return {k: body_to_roff(v) for k, v in parse_source(path.read_text(encoding="utf-8")).items()} if path.exists() else {}

    extra = hand_written("imgcls")
    sections = {
        "SYNOPSIS": "\\fBimgcls\\fR [OPTIONS] COMMAND [ARGS]...",
        "DESCRIPTION": body_to_roff(_help_text(cli)) + ("\n" + extra.pop("DESCRIPTION") if "DESCRIPTION" in extra else ""),
        "OPTIONS": options_roff(cli, root_ctx),
        "COMMANDS": "\n".join(
            f".TP\n\\fBimgcls\\-{c}\\fR(1)\n{roff_escape(_subcommand(cli, root_ctx, c).get_short_help_str(80))}"
            for c in commands
        ),
        "SEE ALSO": ", ".join(f"\\fBimgcls\\-{c}\\fR(1)" for c in commands) + ", \\fBimgcls\\-manifest\\fR(5)",
    }
    sections.update(extra)
    pages["imgcls.1"] = render_page("imgcls", 1, "image classification on small data, as composable commands", sections)

    for name in commands:
        command = _subcommand(cli, root_ctx, name)
        ctx = click.Context(command, info_name=f"imgcls {name}", parent=root_ctx, **command.context_settings)
        extra = hand_written(f"imgcls-{name}")
        # tables a command builds from its library's constants (ops, severities) cannot drift
        module = sys.modules.get(command.callback.__module__) if command.callback else None
        for key, body in getattr(module, "man_sections", lambda: {})().items():
            extra.setdefault(key, body_to_roff(body))
        description = body_to_roff(_help_text(command))
        if "DESCRIPTION" in extra:
            description += "\n" + extra.pop("DESCRIPTION")
        sections = {
            "SYNOPSIS": f"\\fBimgcls {name}\\fR {roff_escape(arguments_synopsis(command, ctx))}",
            "DESCRIPTION": description,
            "OPTIONS": options_roff(command, ctx),
            "SEE ALSO": "\\fBimgcls\\fR(1), \\fBimgcls\\-manifest\\fR(5)",
        }
        sections.update(extra)
        pages[f"imgcls-{name}.1"] = render_page(f"imgcls-{name}", 1, command.get_short_help_str(80), sections)

    extra = hand_written("imgcls-manifest")
    if extra:
        extra.setdefault("SEE ALSO", "\\fBimgcls\\fR(1), \\fBimgcls\\-prepare\\fR(1)")
        pages["imgcls-manifest.5"] = render_page("imgcls-manifest", 5, "the imgcls JSON Lines manifest format, version 1", extra)
    return pages


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m imgcls.manpage", description="Generate or check the man pages.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", metavar="DIR", help="write the pages into DIR")
    mode.add_argument("--check", metavar="DIR", help="exit 1 if the pages in DIR differ from freshly generated ones")
    parser.add_argument("--src", metavar="DIR", help="hand-written sections (default: DIR/src)")
    args = parser.parse_args(argv)
    man_dir = Path(args.write or args.check)
    pages = generate(Path(args.src) if args.src else man_dir / "src")
    if args.write:
        man_dir.mkdir(parents=True, exist_ok=True)
        for file_name, text in pages.items():
            (man_dir / file_name).write_text(text, encoding="utf-8")
        print(f"wrote {len(pages)} pages to {man_dir}", file=sys.stderr)
        return 0
    stale = [f for f, text in pages.items()
             if not (man_dir / f).exists() or (man_dir / f).read_text(encoding="utf-8") != text]
    for f in stale:
        print(f"stale: {man_dir / f} (regenerate with: make man)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
