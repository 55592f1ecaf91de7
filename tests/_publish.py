"""
A running server's hub over HTTP, as any publisher sees it: publish with
``POST /channels/{name}``, a bearer token and a JSON body; and the first
frame a subscriber gets.
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.request
from typing import Any

#: A channel stream's first frame: the reconnection time, and the channel's
#: position as an id when the server announces it.
OPENING = re.compile(rb"retry: 1000\n(id: [0-9]+-[0-9]+\n)?\n")


def publish(base: str, channel: str, token: str, **body: Any) -> str:
    """
    Publish ``body`` (``data``, ``event``, ...) on ``channel`` of the
    server at ``base`` (``http://127.0.0.1:8080``); return the event's id.

    HTTPS certificates are not checked: the tests' are self-signed.
    """
    request = urllib.request.Request(
        f"{base}/channels/{channel}",
        data=json.dumps(body).encode("utf-8"),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    context = ssl._create_unverified_context() if base.startswith("https:") else None
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        answer = json.load(response)
    event_id: str = answer["id"]
    return event_id
