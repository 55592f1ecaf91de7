"""
``twisted-sse check``: an endpoint watched as a browser reads it, then
judged check by check.

The modules, in the order the data flows:

- ``_http``: a request, the response head, and the :class:`Recorder
  <twisted_sse._check._http.Recorder>` a response is reported to;
- ``_h1`` and ``_h2``: HTTP/1.1 read by hand, and HTTP/2 over ``h2``;
- ``_exchange``: one request on a connection of its own;
- ``_connector``: opens each connection (TCP, or TLS with ALPN);
- ``_fetch``: a request that follows redirects as a browser does;
- ``_lint``: the parser that also notes what is wrong in each line;
- ``_recorders``: what is kept of a short exchange and of a stream;
- ``_observations``: all that, as plain values;
- ``_watch``: the :class:`Plan` followed, :func:`observe`;
- ``_judgement``: a :class:`Check <twisted_sse._check._judgement.Check>`
  and what the checks share;
- ``_response_checks``, ``_stream_checks``, ``_request_checks``: the
  checks of the response head, of the stream as it flowed, and of the
  requests beside it;
- ``_report``: every check in order, :func:`judge`, and the report as a
  table or JSON.
"""

from __future__ import annotations

from ._connector import Connector
from ._report import Report, judge, render_text
from ._watch import Plan, observe

__all__ = ["Connector", "Plan", "Report", "judge", "observe", "render_text"]
