"""
Every code block of README.md and docs/ that a reader would copy runs here,
as written.

Sybil (https://sybil.readthedocs.io) collects the blocks of the Markdown
(README.md), MyST (docs/*.md) and reStructuredText (docs/**/*.rst) pages
in order; each block is one test, named by its page and line:

- ``python`` blocks run in the page's namespace, one after the other; a
  block that is a whole program (it calls ``reactor.run()`` or ``react``)
  is saved as a file and run as its reader would, in a process, as a
  server the page's next blocks can reach;
- ``sh`` and ``console`` blocks run in the page's terminal
  (``tests/_docs_session.py``: real ``twistd``, ``curl``, ``nginx`` and
  ``redis-server`` processes, on free ports in place of the page's);
- an invisible block (``.. invisible-code-block: python`` in
  reStructuredText, ``<!-- invisible-code-block: python ... -->`` in
  Markdown) sets up what a page assumes without showing it (a server "in
  another terminal", files the reader has made), through the page's
  ``session``;
- ``.. skip: next "why"`` (``<!-- skip: next "why" -->`` in Markdown)
  skips the next block, with the reason shown by pytest.  Skips are few
  and each says why in the page's source.

:class:`InventoryTests` checks that no block escapes: every ``python``,
``sh`` and ``console`` block is one of the tests, other blocks are only of
the languages that show rather than run (output, HTTP messages, browser
code), and every file a page includes is run by a named test.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import SkipTest

import pytest
from sybil import Document, Example, Sybil
from sybil.evaluators.python import pad
from sybil.evaluators.skip import Skipper
from sybil.parsers import markdown, myst, rest
from twisted.trial.unittest import SynchronousTestCase

from ._docs_session import Session, clean

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: A block that is a whole program: it runs the reactor.
_PROGRAM = re.compile(r"^\s*(reactor\.run\(\)|react\()", re.M)
#: The languages that are run, and those that are only shown.
RUN = ("python", "sh", "console")
SHOWN = ("text", "http", "json", "javascript", "html")


def _session(example: Example) -> Session:
    session = example.namespace.get("session")
    assert isinstance(session, Session)
    return session


def _python(example: Example) -> None:
    session = _session(example)
    source = str(example.parsed)
    if _PROGRAM.search(source):
        name = f"{Path(example.path).stem.lower().replace('-', '_')}_{example.line}.py"
        try:
            session.program(source, name)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{session.logs()}") from None
    else:
        line = example.line + example.parsed.line_offset
        code = compile(
            pad(session.substitute(source), line),
            example.path,
            "exec",
            dont_inherit=True,
        )
        # The block runs in the page's terminal, as "python" typed there
        # would: with the variables its shell blocks exported.
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(session.env)
        try:
            exec(code, example.namespace)
        finally:
            os.environ.clear()
            os.environ.update(saved)


def _shell(language: str) -> Callable[[Example], None]:
    def evaluate(example: Example) -> None:
        session = _session(example)
        try:
            session.run_block(str(example.parsed), language)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{session.logs()}") from None

    return evaluate


def _parsers(kind: Any) -> list[Any]:
    return [
        kind.CodeBlockParser("python", _python),
        kind.CodeBlockParser("sh", _shell("sh")),
        kind.CodeBlockParser("console", _shell("console")),
        kind.SkipParser(),
    ]


_SYBILS = {
    ".md": Sybil(_parsers(markdown), path=str(ROOT)),  # README.md: GitHub's Markdown
    ".myst": Sybil(_parsers(myst), path=str(ROOT)),
    ".rst": Sybil(_parsers(rest), path=str(ROOT)),
}


def pages() -> list[Path]:
    """The pages whose blocks run: the README and every page of docs/."""
    found = [ROOT / "README.md"]
    for path in sorted(DOCS.rglob("*")):
        relative = path.relative_to(DOCS)
        if path.suffix in (".md", ".rst") and relative.parts[0] != "_build":
            found.append(path)
    return found


def _parse(path: Path) -> Document:
    if path.suffix == ".rst":
        sybil = _SYBILS[".rst"]
    elif path.parent == ROOT:
        sybil = _SYBILS[".md"]
    else:
        sybil = _SYBILS[".myst"]
    return sybil.parse(path)


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


_DOCUMENTS = {_name(path): _parse(path) for path in pages()}


def _is_block(example: Example) -> bool:
    """Whether the example is a visible block (not a skip, not set-up)."""
    directive = example.region.lexemes.get("directive") or ""
    return not (
        isinstance(example.region.evaluator, Skipper)
        or directive.startswith("invisible")
    )


def _is_slow(example: Example) -> bool:
    return example.region.evaluator is not _python or bool(
        _PROGRAM.search(str(example.parsed))
    )


def _cases() -> Iterator[Any]:
    for name, document in _DOCUMENTS.items():
        for index, example in enumerate(document.examples()):
            if _is_block(example):
                marks = [pytest.mark.slow] if _is_slow(example) else []
                yield pytest.param(
                    name, index, id=f"{name}:{example.line}", marks=marks
                )


class _Pages:
    """The page being run: its examples so far, and its terminal."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.examples: list[Example] = []
        self.done = 0
        self.session: Session | None = None

    def open(self, name: str) -> None:
        if name == self.name:
            return
        self.close()
        # A fresh parse: a fresh namespace, and skips not yet installed.
        document = _parse(ROOT / name)
        self.name = name
        self.examples = list(document.examples())
        self.done = 0
        self.session = Session(name)
        document.namespace["session"] = self.session

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        self.name, self.session, self.examples, self.done = None, None, [], 0


_PAGES = _Pages()


@pytest.fixture(scope="module", autouse=True)
def _close_pages() -> Iterator[None]:
    yield
    _PAGES.close()


@pytest.mark.parametrize(("page", "index"), list(_cases()))
def test_block(page: str, index: int) -> None:
    """The block runs as its page shows it, after the page's blocks before it."""
    _PAGES.open(page)
    if index < _PAGES.done:
        # Run again (pytest --lf, -k): start the page over.
        _PAGES.close()
        _PAGES.open(page)
    while _PAGES.done < index:
        earlier = _PAGES.examples[_PAGES.done]
        _PAGES.done += 1
        try:
            earlier.evaluate()
        except SkipTest:
            pass
        except Exception as error:
            raise AssertionError(
                f"{page}:{earlier.line}, a block before this one, failed: {error}"
            ) from error
    _PAGES.done = index + 1
    _PAGES.examples[index].evaluate()


# The inventory


_FENCE = re.compile(r"^```+[ \t]*(\{[\w-]+\}[ \t]*)?([\w-]*)", re.M)
_DIRECTIVE = re.compile(
    r"^[ \t]*\.\. (code-block|code|sourcecode|literalinclude)::\s*(\S*)", re.M
)
_MYST_INCLUDE = re.compile(r"^```+\s*\{literalinclude\}\s*(\S+)", re.M)

#: Every file a page includes, and the test that runs it.
INCLUDED = {
    "docs/examples/counter.html": "docs/tutorial.rst",
    "docs/examples/embed_klein.py": "tests/test_docs.py::DashboardTests",
    "docs/examples/embed_twisted_web.py": "tests/test_docs.py::EmbeddingTests",
    "docs/examples/embed_twisted_web.tac": "docs/howto/embed.rst",
    "docs/examples/hub_server.py": "tests/test_docs.py::PublishTests",
    "docs/examples/journal.py": "tests/test_docs.py::JournalTests",
    "docs/examples/nginx.conf": "tests/test_deploy.py::NginxTests",
    "docs/examples/publish.py": "tests/test_docs.py::PublishTests",
    "docs/examples/reader.py": "tests/test_docs.py::ResumeTests",
    "docs/examples/redis_service.py": "tests/test_docs.py::RedisServiceTests",
    "docs/examples/slow_clients.py": "tests/test_docs.py::SlowClientTests",
    "docs/examples/test_counter.py": "tests/test_docs.py::CounterTests",
    "docs/examples/test_dashboard.py": "tests/test_docs.py::DashboardTests",
    "docs/examples/tls.py": "tests/test_docs.py::TLSTests",
    "docs/examples/tutorial_counter.py": "docs/tutorial.rst",
    "docs/examples/twisted-sse.service": "tests/test_deploy.py::SystemdTests",
    "docs/examples/Containerfile": "tests/test_deploy.py::ContainerTests",
    "tests/test_docs.py": "tests/test_docs.py::ResumeTests",
    "tests/test_broker.py": "tests/test_broker.py::ListBroker",
    "CHANGELOG.md": "",
}


def _blocks(path: Path) -> Iterator[tuple[int, str]]:
    """The line and language of each visible code block of a page."""
    text = path.read_text("utf-8")
    if path.suffix == ".rst":
        for match in _DIRECTIVE.finditer(text):
            if match.group(1) != "literalinclude":
                yield text.count("\n", 0, match.start()) + 1, match.group(2)
        return
    inside = False
    for match in _FENCE.finditer(text):
        if inside:
            inside = False
            continue
        inside = True
        directive = (match.group(1) or "").strip()
        if directive in ("", "{code-block}", "{code}", "{sourcecode}"):
            yield text.count("\n", 0, match.start()) + 1, match.group(2)


def _includes(path: Path) -> Iterator[Path]:
    text = path.read_text("utf-8")
    for match in _DIRECTIVE.finditer(text):
        if match.group(1) == "literalinclude":
            yield (path.parent / match.group(2)).resolve()
    for match in _MYST_INCLUDE.finditer(text):
        yield (path.parent / match.group(1)).resolve()
    for match in re.finditer(r"^```+\s*\{include\}\s*(\S+)", text, re.M):
        yield (path.parent / match.group(1)).resolve()


class InventoryTests(SynchronousTestCase):
    """No block a reader would copy escapes the tests."""

    def test_every_runnable_block_is_a_test(self) -> None:
        """Each python, sh and console block of every page is one of the tests."""
        count = 0
        for path in pages():
            lines = {
                example.line
                for example in _DOCUMENTS[_name(path)].examples()
                if _is_block(example)
            }
            for line, language in _blocks(path):
                if language in RUN:
                    count += 1
                    self.assertIn(
                        line, lines, f"{_name(path)}:{line}: not collected by Sybil"
                    )
        self.assertGreater(count, 40)

    def test_other_blocks_only_show(self) -> None:
        """Blocks of other languages only show output, HTTP or browser code."""
        for path in pages():
            for line, language in _blocks(path):
                self.assertIn(
                    language,
                    (*RUN, *SHOWN),
                    f"{_name(path)}:{line}: a {language!r} block is not run; "
                    "put it in docs/examples/, test it, and include it",
                )

    def test_literal_blocks_hold_no_command(self) -> None:
        """reStructuredText's plain ``::`` blocks show output, never a command."""
        command = re.compile(
            # ("twistd sse: ..." and "twisted-sse: ..." are their messages.)
            r"::\n\n([ \t]+)(\$ |curl |twistd (?!sse:)|twisted-sse |python3? |pip )"
        )
        for path in pages():
            if path.suffix == ".rst":
                text = path.read_text("utf-8")
                for match in command.finditer(text):
                    line = text.count("\n", 0, match.start()) + 1
                    self.fail(f"{_name(path)}:{line}: a command in a literal block")

    def test_every_included_file_is_tested(self) -> None:
        """Every file a page includes is named with the test that runs it."""
        for path in pages():
            for included in _includes(path):
                name = str(included.relative_to(ROOT))
                self.assertIn(name, INCLUDED, f"{_name(path)} includes {name}")
        for name, test in INCLUDED.items():
            self.assertTrue((ROOT / name).exists(), name)
            if test:
                module, _, attribute = test.partition("::")
                self.assertIn(attribute, (ROOT / module).read_text("utf-8"), test)

    def test_readme_test_command_is_ci(self) -> None:
        """The README's test command is the one .ci/run runs."""
        readme = (ROOT / "README.md").read_text("utf-8")
        match = re.search(r"^pip install -q -e .*pytest$", readme, re.M)
        assert match is not None
        ci = (ROOT / ".ci" / "run").read_text("utf-8").splitlines()
        self.assertIn(match.group(0), ci)


class TerminalTests(SynchronousTestCase):
    """What a page's terminal shows of a program's raw output."""

    def test_crlf(self) -> None:
        """Lines a program ends with CRLF (curl -i's headers) are kept."""
        self.assertEqual(
            clean(b"HTTP/1.1 200 OK\r\r\nVary: Origin\r\r\n"),
            "HTTP/1.1 200 OK\nVary: Origin\n",
        )

    def test_overwritten(self) -> None:
        """What a carriage return inside a line overwrote is gone."""
        self.assertEqual(clean(b"10%\r50%\r100%\n"), "100%\n")

    def test_colours(self) -> None:
        """Colour codes are dropped."""
        self.assertEqual(clean(b"\x1b[32mok\x1b[0m\n"), "ok\n")
