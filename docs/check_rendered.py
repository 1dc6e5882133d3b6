"""Check the built docs as a reader sees them: every page in headless Chromium, with no network.

``python docs/check_rendered.py docs/_build/html`` loads each page that has maths or a table from
disk (``file://``, network disabled), lets its scripts run, and reads the rendered DOM: MathJax
must have typeset every formula (no raw ``\\(...\\)`` or ``\\[...\\]`` left in the text), and no
table may have a row whose cells are all empty but one (the sign of a simple table whose wrapped
lines became rows). Needs Chromium (Debian: ``apt-get install chromium``); CI runs it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path


class _Text(HTMLParser):
    """The page's visible text outside code, and its table rows as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.rows: list[list[str]] = []
        self._skip = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("pre", "code", "script", "style", "svg", "mjx-assistive-mml"):
            self._skip += 1
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("pre", "code", "script", "style", "svg", "mjx-assistive-mml"):
            self._skip = max(0, self._skip - 1)
        elif tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if not self._skip:
            self.text.append(data)


def rendered(browser: str, page: Path) -> str:
    done = subprocess.run(
        [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--proxy-server=127.0.0.1:9", "--virtual-time-budget=10000", "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return done.stdout


def problems(dom: str) -> list[str]:
    parser = _Text()
    parser.feed(dom)
    found = []
    text = "".join(parser.text)
    for raw in re.findall(r"\\\(.{0,40}|\\\[.{0,40}", text):
        found.append(f"raw LaTeX: {raw!r}")
    if 'class="math' in dom and "<mjx-container" not in dom:
        found.append("maths not typeset (MathJax did not run)")
    for row in parser.rows:
        if len(row) >= 2 and sum(bool(cell) for cell in row) == 1:
            found.append(f"table row with one filled cell: {row}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the built HTML folder")
    parser.add_argument("--browser", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args(argv)
    pages = [
        page
        for page in sorted(args.site.rglob("*.html"))
        if "_modules" not in page.parts
        and page.name not in ("genindex.html", "py-modindex.html", "search.html")
        and re.search(r'class="math|<table', page.read_text(encoding="utf-8"))
    ]
    if not pages:
        print(f"no pages with maths or tables under {args.site}", file=sys.stderr)
        return 1
    failed = 0
    for page in pages:
        for problem in problems(rendered(args.browser, page)):
            print(f"{page.relative_to(args.site)}: {problem}", file=sys.stderr)
            failed += 1
    print(f"{len(pages)} pages rendered in {Path(args.browser).name}: {failed} problems")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
