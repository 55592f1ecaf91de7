"""
Tests for L{twisted_sse._script}: the browser client's files, C{/sse.js}
and C{/sse.d.ts}, as a resource of its own and as routes of the app that
C{twistd sse} serves (its headers, its validator and C{304}, C{HEAD}, the
JSON C{405}), and what the files themselves promise (the module's size, the
declarations of each of its exports).
"""

from __future__ import annotations

import re
from hashlib import sha256
from importlib.resources import files

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from tests._transports import TransportCase, over_both_transports
from twisted_sse import ClientScriptResource
from twisted_sse._app import SSEApp
from twisted_sse.testing import SSETestClient, SSETestResponse

from ._helpers import answer

#: The module's size limit, unminified: 15 KiB.
MAX_SCRIPT_BYTES = 15 * 1024


def static(name: str) -> bytes:
    """The bytes of ``twisted_sse/static/<name>``."""
    return files("twisted_sse").joinpath("static", name).read_bytes()


def etag_of(body: bytes) -> str:
    """The ``ETag`` a file is served with."""
    return '"' + sha256(body).hexdigest()[:16] + '"'


#: The files, with the type each is served as.
FILES = [
    ("sse.js", "text/javascript; charset=utf-8"),
    ("sse.d.ts", "application/typescript; charset=utf-8"),
]


@over_both_transports
class ScriptRoutesTests(TransportCase):
    """``/sse.js`` and ``/sse.d.ts`` of the app twistd sse serves."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.app = SSEApp(self.clock, heartbeat=0)
        self.client = self.client_for(self.app.resource(), self.clock)

    def tearDown(self) -> None:
        self.client.disconnect_all()
        self.client.assert_clean(self.app.registry, self.app.heartbeat, testcase=self)

    def assert_headers(self, response: SSETestResponse, name: str) -> None:
        self.assertEqual(response.header("ETag"), etag_of(static(name)))
        self.assertEqual(response.header("Cache-Control"), "no-cache")
        self.assertEqual(response.header("Access-Control-Allow-Origin"), "*")
        self.assertEqual(response.header("X-Content-Type-Options"), "nosniff")

    def test_files(self) -> None:
        """GET serves each file whole, with its type, validator and CORS."""
        for name, content_type in FILES:
            response = self.client.request("GET", "/" + name, {"Accept": "*/*"})
            self.assertEqual(response.code, 200, name)
            self.assertEqual(response.header("Content-Type"), content_type)
            self.assertEqual(response.raw, static(name))
            self.assertEqual(response.header("Content-Length"), str(len(static(name))))
            self.assert_headers(response, name)

    def test_head(self) -> None:
        """HEAD has GET's headers and the file's length, with no body."""
        for name, content_type in FILES:
            response = self.client.request("HEAD", "/" + name)
            self.assertEqual((response.code, response.raw), (200, b""), name)
            self.assertEqual(response.header("Content-Type"), content_type)
            self.assertEqual(response.header("Content-Length"), str(len(static(name))))
            self.assert_headers(response, name)

    def test_not_modified(self) -> None:
        """If-None-Match naming the file's ETag, or *, is a 304 with no body."""
        tag = etag_of(static("sse.js"))
        for header in (tag, f'"0000000000000000", {tag}', f"W/{tag}", "*"):
            for method in ("GET", "HEAD"):
                response = self.client.request(
                    method, "/sse.js", {"If-None-Match": header}
                )
                self.assertEqual((response.code, response.raw), (304, b""), header)
                self.assertEqual(response.header("Content-Type"), None)
                self.assert_headers(response, "sse.js")

    def test_modified(self) -> None:
        """If-None-Match naming another version gets the file."""
        tag = etag_of(static("sse.d.ts"))
        for header in ('"0000000000000000"', tag.strip('"'), tag + "x"):
            response = self.client.request("GET", "/sse.js", {"If-None-Match": header})
            self.assertEqual(response.code, 200, header)
            self.assertEqual(response.raw, static("sse.js"))

    def test_methods_not_allowed(self) -> None:
        """Any other method: a JSON 405 with Allow: GET, HEAD."""
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            for name, _ in FILES:
                response = self.client.request(method, "/" + name)
                self.assertEqual(response.code, 405, (method, name))
                self.assertEqual(response.header("Allow"), "GET, HEAD")
                self.assertEqual(response.header("Content-Type"), "application/json")
                self.assertEqual(
                    answer(response),
                    {"error": f"method {method} not allowed here: use GET, HEAD"},
                )

    def test_below_the_files(self) -> None:
        """A path below a file is not the file: a JSON 404 listing them."""
        response = self.client.get("/sse.js/x")
        self.assertEqual(response.code, 404)
        reason = answer(response)["error"]
        self.assertIn("/sse.js", reason)
        self.assertIn("/sse.d.ts", reason)

    def test_page_imports_the_module(self) -> None:
        """The page at / imports the module by a relative URL (any prefix)."""
        page = self.client.get("/").raw.decode("utf-8")
        self.assertTrue('<script type="module">' in page, "no module script")
        imports = re.findall(r'import \{[^}]*\} from "([^"]*)"', page)
        self.assertEqual(imports, ["./sse.js"])


class ClientScriptResourceTests(SynchronousTestCase):
    """The resource on its own, as users mount it."""

    def test_mounted(self) -> None:
        """Mounted as a child of the user's own tree, it serves the module."""
        root = Resource()
        root.putChild(b"sse.js", ClientScriptResource("sse.js"))
        client = SSETestClient(root)
        response = client.request("GET", "/sse.js")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.raw, static("sse.js"))
        self.assertEqual(response.header("ETag"), etag_of(static("sse.js")))
        client.disconnect_all()

    def test_default_is_the_module(self) -> None:
        """Without a name, it serves sse.js."""
        resource = ClientScriptResource()
        self.assertEqual((resource.name, resource.body), ("sse.js", static("sse.js")))

    def test_other_names(self) -> None:
        """Only the client's two files can be served: others raise ValueError."""
        for name in ("index.html", "../_app.py", "sse.ts", ""):
            with self.assertRaises(ValueError):
                ClientScriptResource(name)

    @settings(deadline=None, max_examples=200)
    @given(
        others=st.lists(
            st.text(alphabet="0123456789abcdef", min_size=1, max_size=16), max_size=4
        ),
        include=st.booleans(),
        weak=st.booleans(),
        position=st.integers(min_value=0, max_value=4),
        spaces=st.sampled_from(["", " ", "  ", "\t"]),
    )
    def test_if_none_match(
        self,
        others: list[str],
        include: bool,
        weak: bool,
        position: int,
        spaces: str,
    ) -> None:
        """Any list of tags gives a 304 exactly when it names the file's."""
        resource = ClientScriptResource("sse.d.ts")
        etag = resource.etag.decode("ascii")
        tags = [f'"{other}"' for other in others if f'"{other}"' != etag]
        if include:
            tags.insert(position, ("W/" if weak else "") + etag)
        request = DummyRequest([b""])
        if tags:
            header = ("," + spaces).join(tags)
            request.requestHeaders.setRawHeaders(b"If-None-Match", [header.encode()])
        body = resource.render(request)
        if include:
            self.assertEqual((request.responseCode, body), (304, b""))
        else:
            self.assertEqual((request.responseCode, body), (None, resource.body))
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"ETag"), [resource.etag]
        )


#: What an ES module exports, by declaration or by list.
_DECLARED = re.compile(
    r"^export\s+(?:default\s+)?(?:async\s+)?"
    r"(?:class|function\*?|const|let|var)\s+([A-Za-z_$][\w$]*)",
    re.MULTILINE,
)
_LISTED = re.compile(r"^export\s*\{([^}]*)\}", re.MULTILINE)


def exports(source: str) -> set[str]:
    """The names ``source`` (an ES module) exports."""
    names = set(_DECLARED.findall(source))
    for listed in _LISTED.findall(source):
        for item in listed.split(","):
            item = item.strip()
            if item:
                names.add(item.split(" as ")[-1].strip())
    return names


class ModuleFileTests(SynchronousTestCase):
    """What the module's files promise their users."""

    def test_size(self) -> None:
        """sse.js stays under 15 KiB, unminified."""
        self.assertLess(len(static("sse.js")), MAX_SCRIPT_BYTES)

    def test_exports(self) -> None:
        """The module exports the documented API."""
        self.assertLessEqual(
            {"SSEClient", "SSEStream", "Parser", "Election"},
            exports(static("sse.js").decode("utf-8")),
        )

    def test_declarations(self) -> None:
        """sse.d.ts declares every export of sse.js."""
        declarations = static("sse.d.ts").decode("utf-8")
        for name in exports(static("sse.js").decode("utf-8")):
            self.assertRegex(
                declarations,
                r"(?m)^export\s+(?:declare\s+)?(?:default\s+)?(?:abstract\s+)?"
                r"(?:class|function|const|let|var|interface|type|enum|namespace)\s+"
                + re.escape(name)
                + r"\b"
                + r"|^export\s*\{[^}]*\b"
                + re.escape(name)
                + r"\b",
            )

    def test_exports_helper(self) -> None:
        """The export reader finds declared and listed names, and only those."""
        source = (
            "export class A {}\nexport async function b() {}\n"
            "export const C = 1;\nconst d = 2;\nexport { d as D, e };\n"
            "// export class Nope {}\n"
        )
        self.assertEqual(exports(source), {"A", "b", "C", "D", "e"})
