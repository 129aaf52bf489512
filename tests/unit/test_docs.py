"""The docs cannot go stale silently: every excerpt docs/porting.md shows as taken from a file
still occurs there verbatim, its runnable example runs, and every file, test or function that
README.md and docs/ name by path exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "porting.md", ROOT / "docs" / "perf.md"]
# Where a path written relative to the package or the tests is looked up.
SEARCH = [ROOT, ROOT / "src" / "pe_port", ROOT / "src" / "pe_port" / "kernels", ROOT / "tests",
          ROOT / "src", ROOT / "scripts", ROOT / "reference", ROOT / "cpp" / "src"]
# Files of Meta's repository the docs compare against; not in this one.
OFFICIAL = {"pe.py", "core/vision_encoder/pe.py", "core/vision_encoder/rope.py"}
# A ```python block is preceded by one of these markers.
BLOCK = re.compile(
    r"<!-- (excerpt: (?P<path>\S+)|runnable|sketch) -->\n```python\n(?P<body>.*?)```",
    re.S)
PATH = re.compile(r"`((?:[\w.-]+/)*[\w.-]+\.(?:py|md|cc|h|sh|toml))(?:::(\w+))?`")


def python_blocks(text: str) -> int:
    return text.count("```python\n")


def excerpts():
    text = (ROOT / "docs" / "porting.md").read_text()
    return [m for m in BLOCK.finditer(text) if m["path"]]


def test_every_python_block_of_the_porting_guide_is_marked():
    text = (ROOT / "docs" / "porting.md").read_text()
    assert len(BLOCK.findall(text)) == python_blocks(text), (
        "each ```python block of docs/porting.md needs <!-- excerpt: PATH -->, <!-- runnable -->"
        " or <!-- sketch --> on the line before it")


@pytest.mark.parametrize("match", excerpts(), ids=lambda m: f"{m['path']}:{m['body'][:30]!r}")
def test_excerpt_occurs_verbatim_in_its_file(match):
    source = (ROOT / match["path"]).read_text()
    # "..." on a line of its own stands for lines left out; the pieces occur in order.
    position = 0
    for piece in re.split(r"^[ \t]*\.\.\.\n", match["body"], flags=re.M):
        if not piece.strip():
            continue
        found = source.find(piece, position)
        assert found >= 0, f"not in {match['path']} (after offset {position}):\n{piece}"
        position = found + len(piece)


def test_runnable_example_runs(tmp_path, monkeypatch):
    """The ten-line loop of docs/porting.md (export_tvm -> build -> VirtualMachine)."""
    text = (ROOT / "docs" / "porting.md").read_text()
    runnable = [m["body"] for m in BLOCK.finditer(text) if m.group(1) == "runnable"]
    assert runnable
    monkeypatch.chdir(tmp_path)
    for body in runnable:
        exec(compile(body, "docs/porting.md", "exec"), {"__name__": "docs_example"})


def _resolve(name: str) -> Path | None:
    for base in SEARCH:
        if (base / name).exists():
            return base / name
    return None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_named_file_and_test_exists(doc):
    missing = []
    for match in PATH.finditer(doc.read_text()):
        name, symbol = match[1], match[2]
        if name in OFFICIAL:
            continue
        path = _resolve(name)
        if path is None:
            missing.append(name)
        elif symbol and not re.search(rf"^\s*((def|class) {symbol}\b|{symbol} = )",
                                      path.read_text(), re.M):
            missing.append(f"{name}::{symbol}")
    assert not missing, f"{doc.name} names what does not exist: {missing}"


def test_readme_layout_table_matches_the_tree():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout"):]
    table = table[:table.index("\n## ", 4)]
    named = re.findall(r"^\| `([^`]+)`", table, re.M)
    assert named, "README has no layout table"
    for entry in named:
        for part in re.split(r",\s*", entry):
            assert (ROOT / part.strip("`")).exists() or _resolve(part.strip("`")), part
    package = ROOT / "src" / "pe_port"
    modules = {p.name for p in package.glob("*.py")} - {"__init__.py"}
    for module in modules:
        assert module in table, f"src/pe_port/{module} is missing from the README layout table"
