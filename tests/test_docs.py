"""The docs tell one story: links between them resolve, and every install line names the
distribution this project publishes (`celeryflow-engine`), never the unrelated
`celeryflow` on the package index."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "MIGRATION.md", "docs/DESIGN.md", "celeryflow/transport/TRANSPORT.md"]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
INSTALL = re.compile(r"pip install\b([^#;&|\n]*)")  # the arguments, up to a comment or `&&`


def installs_celeryflow(line: str) -> bool:
    """`pip install 'celeryflow[...]'` or `pip install celeryflow`: the wrong project."""
    return any(
        re.split(r"[\[=<>~!]", arg.strip("'\""))[0] == "celeryflow"
        for args in INSTALL.findall(line)
        for arg in args.split()
    )


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_resolve(doc: str) -> None:
    path = ROOT / doc
    missing = [
        target
        for target in LINK.findall(path.read_text())
        if "://" not in target and not (path.parent / target).exists()
    ]
    assert not missing, f"{doc} links to missing files: {missing}"


def test_every_install_line_names_celeryflow_engine() -> None:
    files = [ROOT / d for d in DOCS]
    files += sorted((ROOT / "examples").glob("*.py"))
    files += sorted((ROOT / "celeryflow").rglob("*.py"))
    wrong = [
        f"{f.relative_to(ROOT)}: {line.strip()}"
        for f in files
        for line in f.read_text().splitlines()
        if installs_celeryflow(line)
    ]
    assert not wrong, "install lines naming the unrelated `celeryflow` distribution:\n" + (
        "\n".join(wrong)
    )


def test_the_install_line_check_tells_the_two_names_apart() -> None:
    assert installs_celeryflow("pip install 'celeryflow[postgres,redis]'")
    assert installs_celeryflow("pip install -U celeryflow==0.2.0")
    assert not installs_celeryflow("pip install 'celeryflow-engine[redis]'  # not celeryflow")
    assert not installs_celeryflow("pip install -e . && python -m celeryflow")
