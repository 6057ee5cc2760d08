"""README's generated tables (imgcls.docgen) are current, and the check catches a stale one."""

from __future__ import annotations

import pytest

from imgcls import docgen


def test_docgen_readme_is_current(capsys):
    assert docgen.main(["--check"]) == 0, capsys.readouterr().err + " (run: make docs)"


def test_docgen_check_detects_a_stale_table_and_write_fixes_it(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(docgen.README.read_text(encoding="utf-8").replace("| jpeg | 80 /", "| jpeg | 81 /", 1),
                      encoding="utf-8")
    assert docgen.main(["--check", str(readme)]) == 1
    assert "stale: " in capsys.readouterr().err
    assert docgen.main(["--write", str(readme)]) == 0
    assert docgen.main(["--check", str(readme)]) == 0
    assert readme.read_text(encoding="utf-8") == docgen.README.read_text(encoding="utf-8")


def test_docgen_tables_are_the_librarys():
    """Every op, preset and perturbation family, with the library's defaults and values."""
    from imgcls.augment import OP_DEFS, PRESETS
    from imgcls.perturb import SEVERITY_TABLE, severity_rows

    ops = docgen.augment_ops_table()
    for name in OP_DEFS:
        assert f"| `{name}" in ops, name
    assert "| `rotate[:DEG]` | 15 |" in ops
    for name in PRESETS:
        assert f"{name} = " in ops
    assert "strong = standard + `trivial`" in ops
    severities = docgen.perturb_severities_table()
    assert len(severities.splitlines()) == 2 + len(SEVERITY_TABLE)
    for family, values, _ in severity_rows():
        assert f"| {family} | {values} |" in severities
    rows = severities.splitlines()[2:]
    assert [row.split("|")[1].strip() for row in rows] == list(SEVERITY_TABLE)


def test_docgen_missing_or_unknown_block_is_an_error(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no tables\n", encoding="utf-8")
    assert docgen.main(["--check", str(readme)]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown generated block 'nope'"):
        docgen.render("<!-- generated: nope -->\nx\n<!-- end -->\n")
