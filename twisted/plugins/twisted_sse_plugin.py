"""The ``twistd sse`` dropin: imports ``twisted_sse._tap`` only when used."""

from twisted.application.service import ServiceMaker

sse = ServiceMaker(
    "twisted_sse",
    "twisted_sse._tap",
    "Serve Server-Sent Events (a counter stream, channels and a demo page).",
    "sse",
)
