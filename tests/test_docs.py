"""The README and docs stay true: their marked commands run, the figures they quote are what those
commands print, every link resolves, and the README stays a five-minute read.

Markers (see docs/developer-notes.md, "Doc-tests"):

* a fenced block whose first line is ``# doc-test`` is run with bash (``-euo pipefail``) in a
  temporary folder, on tiny local models, offline (``HF_HUB_OFFLINE=1``); words after the marker:
  ``slow`` (marked ``slow`` and run only when ``-m`` selects it, so the default suite stays fast)
  and ``timeout=N`` (seconds, default 300);
* a later fenced block whose first line is ``# doc-output`` (before the next doc-test block) is
  that command's expected output: each of its non-blank lines must appear in what the command
  printed, in order (``...`` lines skip); so a figure quoted there comes from a command a test runs.

Blocks of one page share its folder and run in page order (a block may use an earlier block's
files); running one block alone runs the blocks above it first. The folder holds
``training/configs`` (a link to the shipped recipes), so commands are written as a user in the
repository root would type them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
_MARKER = re.compile(r"^#\s*doc-test\b(.*)$")
_OUTPUT = re.compile(r"^#\s*doc-output\b")


@dataclass
class Fence:
    line: int  # 1-based line of the opening fence
    info: str
    lines: list[str]


@dataclass
class DocTest:
    page: Path
    line: int
    script: str
    slow: bool = False
    timeout: int = 300
    expected: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def fences(text: str) -> list[Fence]:
    """Every fenced block of a Markdown text (nested-safe: a fence closes with the same character and
    at least its length)."""
    found, current, opener = [], None, ""
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if current is None:
            if match:
                current, opener = Fence(number, match.group(3).strip(), []), match.group(2)
            continue
        if match and match.group(2)[0] == opener[0] and len(match.group(2)) >= len(opener) and not match.group(3).strip():
            found.append(current)
            current = None
            continue
        current.lines.append(line)
    assert current is None, f"unclosed fence opened on line {current.line}"
    return found


def doc_tests(page: Path) -> list[DocTest]:
    tests: list[DocTest] = []
    for fence in fences(page.read_text(encoding="utf-8")):
        first = fence.lines[0].strip() if fence.lines else ""
        marker = _MARKER.match(first)
        if marker:
            options = marker.group(1).split()
            test = DocTest(page, fence.line, "\n".join(fence.lines[1:]))
            for option in options:
                if option == "slow":
                    test.slow = True
                elif option.startswith("timeout="):
                    test.timeout = int(option.split("=", 1)[1])
                else:
                    raise AssertionError(f"{test.id}: unknown doc-test option {option!r} (slow, timeout=N)")
            tests.append(test)
        elif _OUTPUT.match(first):
            assert tests and not tests[-1].expected, f"{page.name}:{fence.line}: a doc-output block needs a doc-test block before it"
            tests[-1].expected = [line.rstrip() for line in fence.lines[1:] if line.strip()]
    return tests


ALL_TESTS = [test for page in PAGES for test in doc_tests(page)]


def _params():
    for test in ALL_TESTS:
        marks = [pytest.mark.slow] if test.slow else []
        yield pytest.param(test, id=test.id, marks=marks)


class PageSession:
    """One temporary folder per page; blocks run once each, in page order."""

    def __init__(self, page: Path, folder: Path):
        self.page, self.folder = page, folder
        self.outputs: dict[int, str] = {}
        (folder / "training").mkdir()
        (folder / "training" / "configs").symlink_to(ROOT / "training" / "configs", target_is_directory=True)

    def run_through(self, test: DocTest) -> str:
        for earlier in doc_tests(self.page):
            if earlier.line not in self.outputs:
                self.outputs[earlier.line] = self._run(earlier)
            if earlier.line == test.line:
                break
        return self.outputs[test.line]

    def _run(self, test: DocTest) -> str:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
               # the `emofeedback2` console script and `python` of the interpreter running the tests
               "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", test.script], cwd=self.folder, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=test.timeout)
        assert done.returncode == 0, f"{test.id} exited with {done.returncode}:\n{test.script}\n--- output ---\n{done.stdout[-6000:]}"
        return done.stdout


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    made: dict[Path, PageSession] = {}

    def get(page: Path) -> PageSession:
        if page not in made:
            made[page] = PageSession(page, tmp_path_factory.mktemp(page.stem.replace(".", "_")))
        return made[page]

    return get


def expected_in_order(expected: list[str], output: str) -> None:
    lines = [line.rstrip() for line in output.splitlines()]
    at = 0
    for want in expected:
        if want.strip() == "...":
            continue
        while at < len(lines) and want.strip() not in lines[at]:
            at += 1
        assert at < len(lines), f"expected line not printed (in this order): {want!r}\n--- output ---\n{output[-6000:]}"
        at += 1


def slow_selected(markexpr: str) -> bool:
    """Whether ``-m`` asks for the slow tier (``-m slow``, ``-m "slow and not gpu"``), not ``not slow``."""
    return bool(re.search(r"(?<!not )\bslow\b", markexpr or ""))


@pytest.mark.parametrize("test", list(_params()))
def test_marked_commands_run_and_print_what_the_docs_quote(test: DocTest, sessions, request):
    if test.slow and not slow_selected(request.config.getoption("markexpr")):
        pytest.skip("slow doc-test: run with python -m pytest -m slow tests/test_docs.py")
    output = sessions(test.page).run_through(test)
    expected_in_order(test.expected, output)


def test_every_figure_block_has_its_command_and_the_harness_finds_some():
    assert len(ALL_TESTS) >= 5 and any(t.expected for t in ALL_TESTS)
    assert any(not t.slow for t in ALL_TESTS) and any(t.slow for t in ALL_TESTS)


def test_slow_doc_tests_wait_for_an_explicit_slow_selection():
    assert slow_selected("slow") and slow_selected("slow and not gpu") and slow_selected("learning or slow")
    assert not slow_selected("") and not slow_selected("not slow") and not slow_selected("learning")


def test_the_output_check_can_fail():
    expected_in_order(["a 1", "...", "c 3"], "a 1\nb 2\nc 3\n")
    with pytest.raises(AssertionError, match="not printed"):
        expected_in_order(["c 3", "a 1"], "a 1\nb 2\nc 3\n")  # out of order
    with pytest.raises(AssertionError, match="not printed"):
        expected_in_order(["V-Err 1.432"], "V-Err 1.232\n")


# --- links ------------------------------------------------------------------------------------------

_LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens and underscores kept),
    spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _fenced_lines(text: str) -> set[int]:
    lines: set[int] = set()
    for fence in fences(text):
        lines.update(range(fence.line, fence.line + len(fence.lines) + 2))
    return lines


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings (a repeated heading gets -1, -2, ... as on GitHub)."""
    text = page.read_text(encoding="utf-8")
    fenced = _fenced_lines(text)
    found: set[str] = set()
    counts: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = None if number in fenced else re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(2))
            n = counts.get(base, 0)
            found.add(base if n == 0 else f"{base}-{n}")
            counts[base] = n + 1
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link and image outside fences and inline code."""
    text = page.read_text(encoding="utf-8")
    fenced = _fenced_lines(text)
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if number in fenced:
            continue
        for match in _LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            found.append((number, match.group(1) or match.group(2)))
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """One line per link of ``page`` that names no file, leaves ``root`` or names a missing heading."""
    broken = []
    for number, target in links(page):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not fetched here (no network)
            if not target.startswith(("https://", "http://", "mailto:")):
                broken.append(f"{page.name}:{number}: {target} (unknown scheme)")
            continue
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            broken.append(f"{page.name}:{number}: {target} (no file {destination})")
            continue
        if not str(destination).startswith(str(root)):
            broken.append(f"{page.name}:{number}: {target} leaves the repository")
        if anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{page.name}:{number}: {target} (no heading #{anchor} in {destination.name})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_link_resolves(page):
    broken = broken_links(page)
    assert not broken, "\n".join(broken)


def test_the_link_check_can_fail(tmp_path):
    page = tmp_path / "p.md"
    (tmp_path / "there.md").write_text("# There\n")
    page.write_text("# Top\n## Two words\n[a](#two-words) [b](#missing) [c](nope.md) [d](there.md#there)\n"
                    "[e](there.md#gone) [f](ftp://x)\n```\n[g](inside-a-fence.md)\n```\n")
    assert anchors(page) == {"top", "two-words"}
    assert [t for _, t in links(page)] == ["#two-words", "#missing", "nope.md", "there.md#there", "there.md#gone",
                                           "ftp://x"]
    flagged = broken_links(page, root=tmp_path)
    assert len(flagged) == 4, flagged
    assert [line.split(": ")[1].split(" ")[0] for line in flagged] == ["#missing", "nope.md", "there.md#gone", "ftp://x"]
    assert any("leaves the repository" in line for line in broken_links(page, root=tmp_path / "elsewhere"))


# --- the README -------------------------------------------------------------------------------------


def test_readme_is_short_and_links_every_docs_page_and_every_workflow():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    targets = {t.split("#")[0] for _, t in links(ROOT / "README.md")}
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in targets, f"README does not link docs/{page.name}"
    for workflow in sorted((ROOT / "workflows").glob("*.json")):
        assert f"workflows/{workflow.name}" in targets, f"README does not list workflows/{workflow.name}"
    pictures = [t for _, t in links(ROOT / "README.md") if t.endswith(".png")]
    assert pictures and all((ROOT / p).is_file() for p in pictures)


def readme_test_command() -> str:
    """The README's test command: the line under the '# 2. run the tests' comment of its quick start."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if line.strip().startswith("# 2.") and "test" in line:
            return lines[number + 1].strip()
    raise AssertionError("README's quick start has no '# 2. run the tests' line")


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = readme_test_command()
    assert shlex.split(command)[:3] == ["python", "-m", "pytest"]
    assert command in [line.strip() for line in ci], f"{command!r} is not a line of .ci/run"


_REPO_PATH = re.compile(r"`((?:engines|training|cli|nodes|bench|evaluation|tiny_models|tests|workflows|docs|\.ci)/[\w./-]*)`")


@pytest.mark.parametrize("page", [*PAGES, ROOT / "ARCHITECTURE.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_the_docs_name_exists(page):
    """A `engines/loop/refiner.py`-style path in a page names a file or folder that is there (no stale
    paths after a move)."""
    missing = [f"{page.name}: {m}" for m in _REPO_PATH.findall(page.read_text(encoding="utf-8"))
               if not (ROOT / m.rstrip("/")).exists()]
    assert not missing, "\n".join(missing)
