"""
Sphinx configuration for the twisted_sse documentation.

Build it with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``
(the ``docs`` extra installs Sphinx and MyST).  No intersphinx: the build
must work without network access, so names from Twisted and other projects
are shown in full but not linked.  Every reference to twisted_sse itself
must resolve (``nitpicky``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.ext.autodoc import ClassDocumenter
from sphinx.util.docstrings import prepare_docstring
from zope.interface.interface import InterfaceClass, Method

# autodoc imports the package: make the checkout importable even when it is
# not installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Load every module autodoc documents now, so that the loop below sees the
# interfaces they use (SSEApp is imported lazily, on first use).
import twisted_sse
import twisted_sse.testing
from twisted_sse import SSEApp  # noqa: F401

# A zope.interface interface is an object, not a class, and has no
# __qualname__: autodoc would print an annotation such as IReactorTime as
# "<InterfaceClass twisted.internet.interfaces.IReactorTime>".  Give every
# interface loaded so far its plain name.
for _module in list(sys.modules.values()):
    for _value in list(getattr(_module, "__dict__", {}).values()):
        if isinstance(_value, InterfaceClass) and not hasattr(_value, "__qualname__"):
            _value.__qualname__ = _value.__name__

project = "twisted_sse"
author = "the twisted_sse authors"
copyright = "the twisted_sse authors, MIT licence"
version = release = twisted_sse.__version__

# The module graph of docs/explanation/design.rst, drawn from the source.
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))
extensions = ["sphinx.ext.autodoc", "myst_parser", "modulegraph"]
graphviz_output_format = "svg"

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Docstrings use Sphinx fields (:param:, :returns:, :ivar:), so no napoleon.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
nitpicky = True
nitpick_ignore_regex = [
    # Other projects' objects: without intersphinx they cannot be linked.
    (r"py:.*", r"(twisted|klein|zope|treq|attrs?|prometheus_client|txredisapi)\..*"),
    (r"py:.*", r"(collections|typing|enum|random|argparse|unittest|abc|types)\..*"),
    (r"py:.*", r"(bool|bytes|str|int|float|object|None|Exception|BaseException)"),
    (r"py:.*", r"(ValueError|RuntimeError|TypeError|dict|list|tuple|set|type)"),
    # Constructor annotations are not evaluated for a class's description,
    # so other projects' names appear there as written in the source.
    (r"py:class", r"I[A-Z]\w+|Clock|Headers|Random|Site"),
]
nitpick_ignore = [
    # A private type alias in RedisBroker's signature (the maker of a
    # cluster node's connection), described by its parameter.
    ("py:class", "MakeNode"),
    # The public key types load_public_key answers with: cryptography's
    # documentation has no intersphinx inventory entry for them.
    ("py:class", "cryptography.hazmat.primitives.asymmetric.rsa.RSAPublicKey"),
    ("py:class", "cryptography.hazmat.primitives.asymmetric.ec.EllipticCurvePublicKey"),
    ("py:class", "cryptography.hazmat.primitives.asymmetric.ed25519.Ed25519PublicKey"),
    ("py:class", "cryptography.hazmat.primitives.asymmetric.ed448.Ed448PublicKey"),
    # Instance variables described with :ivar: in a class docstring, and
    # module constants that are not part of the public API, are referred to
    # from docstrings but have no entry of their own.
    ("py:attr", "reconnection_time"),
    ("py:attr", "on_message"),
    ("py:attr", "events"),
    ("py:data", "DRAIN_RATE"),
    ("py:data", "SECRET_PARAMETERS"),
    # What SSETestClient hands the responses it makes (tests never make
    # one), and the names twisted_sse.testing's functions are annotated with
    # in the private modules behind it.
    ("py:class", "Turns"),
    ("py:class", "SentRequest"),
    ("py:class", "TestCase"),
    ("py:class", "Checkable"),
    # What a Fanin is made with, in the private module behind it.
    ("py:class", "Selection"),
    ("py:class", "Deliver"),
]

myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"twisted_sse {release}"
html_theme_options = {
    "description": "Server-Sent Events for Twisted",
    "fixed_sidebar": True,
    # Wide enough for the examples' 88-column lines.
    "page_width": "1180px",
    "sidebar_width": "240px",
}


class InterfaceDocumenter(ClassDocumenter):
    """
    ``.. autointerface::``: document a zope.interface interface, its
    attributes and its methods (autodoc alone sees an interface as an
    object without members).
    """

    objtype = "interface"
    directivetype = "class"
    priority = ClassDocumenter.priority + 10

    @classmethod
    def can_document_member(
        cls, member: Any, membername: str, isattr: bool, parent: Any
    ) -> bool:
        return isinstance(member, InterfaceClass)

    def format_signature(self, **kwargs: Any) -> str:
        return ""

    def get_doc(self) -> list[list[str]]:
        return [prepare_docstring(self.object.__doc__ or "")]

    def document_members(self, all_members: bool = False) -> None:
        source = self.get_sourcename()
        for name, description in self.object.namesAndDescriptions():
            if isinstance(description, Method):
                signature = description.getSignatureString()  # type: ignore[no-untyped-call]
                header = f".. py:method:: {name}{signature}"
            else:
                header = f".. py:attribute:: {name}"
            self.add_line("", source)
            self.add_line(header, source)
            self.add_line("", source)
            for line in prepare_docstring(description.__doc__ or ""):
                self.add_line("   " + line if line else "", source)


def setup(app: Sphinx) -> None:
    app.add_autodocumenter(InterfaceDocumenter)
