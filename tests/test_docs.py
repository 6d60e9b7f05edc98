"""The documentation site: every page is in the mkdocs nav, and marked examples run.

A Python block preceded by the line ``<!-- run -->`` is runnable: the blocks of one page
run in order in one namespace (so a page can build on its earlier blocks), in a fresh
working folder, with ``XDG_DATA_HOME`` pointing there so the embedded default store and
the outbox are temporary too. Blocks without the marker are illustrations (fragments
with ``...``, shell sessions). Building the site itself (``mkdocs build --strict``) is
``make docs``, run by CI.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.children import REPO_ROOT

yaml = pytest.importorskip("yaml", reason="reading mkdocs.yml needs PyYAML (the dev extra)")

ROOT = Path(REPO_ROOT)
DOCS = ROOT / "docs"
RUN_MARKER = "<!-- run -->"
RUNNABLE = re.compile(r"^<!-- run -->\n```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)
PAGES = sorted(path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md"))
RUNNABLE_PAGES = [page for page in PAGES if RUN_MARKER in (DOCS / page).read_text("utf-8")]


def _nav_pages(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [page for item in node for page in _nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in _nav_pages(value)]
    return []


def _nav() -> list[str]:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text("utf-8"))
    return _nav_pages(config["nav"])


def test_every_page_in_docs_is_in_the_nav() -> None:
    missing = sorted(set(PAGES) - set(_nav()))

    assert not missing, f"add these pages to the nav in mkdocs.yml: {missing}"


def test_every_page_in_the_nav_exists() -> None:
    absent = sorted(page for page in _nav() if not (DOCS / page).is_file())

    assert not absent, f"the nav in mkdocs.yml names pages that do not exist: {absent}"


def test_the_index_links_every_top_level_page() -> None:
    index = (DOCS / "index.md").read_text("utf-8")
    top_level = [page for page in PAGES if "/" not in page and page != "index.md"]

    unlinked = [page for page in top_level if f"({page})" not in index]

    assert not unlinked, f"docs/index.md does not link {unlinked}"


def test_every_run_marker_is_followed_by_a_python_block() -> None:
    for page in RUNNABLE_PAGES:
        text = (DOCS / page).read_text("utf-8")

        assert text.count(RUN_MARKER) == len(RUNNABLE.findall(text)), page


def test_the_guides_have_runnable_examples() -> None:
    blocks = sum(len(RUNNABLE.findall((DOCS / page).read_text("utf-8"))) for page in PAGES)

    assert {"getting-started.md", "durability.md", "outbox.md", "faq.md"} <= set(RUNNABLE_PAGES)
    assert blocks >= 15


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_the_runnable_examples_of_a_page_run(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    path = DOCS / page
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    blocks = RUNNABLE.findall(path.read_text("utf-8"))

    for number, block in enumerate(blocks, start=1):
        # dont_inherit: a block runs as a reader's script would, without this module's
        # `from __future__ import annotations` (pydantic models in it must see real types).
        code = compile(block, f"{path}, runnable block {number}", "exec", dont_inherit=True)
        exec(code, namespace)  # noqa: S102 - our own documentation

    assert blocks
