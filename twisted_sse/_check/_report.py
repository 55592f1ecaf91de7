"""
The report of ``twisted-sse check``: :func:`judge` runs every check of
:data:`CHECKS` on the observations, in order, into a :class:`Report`, which
:func:`render_text` shows as a table and :meth:`Report.to_json` as one
JSON document.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from attrs import frozen

from ._judgement import Check, seconds
from ._observations import Observations
from ._request_checks import check_cors, check_cors_preflight, check_head, check_publish
from ._response_checks import (
    check_cache_control,
    check_content_encoding,
    check_content_length,
    check_content_type,
    check_framing,
    check_status,
)
from ._stream_checks import (
    check_delivery,
    check_first_byte,
    check_frames,
    check_heartbeat,
    check_resume,
    check_stream,
)

__all__ = ["CHECKS", "Report", "judge", "render_text"]

#: Every check, in the order of the report.
CHECKS: Final[Sequence[Callable[[Observations], Check]]] = (
    check_status,
    check_content_type,
    check_cache_control,
    check_content_length,
    check_content_encoding,
    check_framing,
    check_first_byte,
    check_stream,
    check_frames,
    check_delivery,
    check_heartbeat,
    check_resume,
    check_head,
    check_cors_preflight,
    check_cors,
    check_publish,
)


@frozen
class Report:
    """
    Every check of one endpoint.

    :ivar observations: What was seen.
    :ivar checks: The judgements, in :data:`CHECKS` order.
    """

    observations: Observations
    checks: tuple[Check, ...]

    @property
    def failed(self) -> bool:
        """Whether a check failed."""
        return any(check.status == "fail" for check in self.checks)

    @property
    def exit_code(self) -> int:
        """``1`` if a check failed, else ``0``."""
        return 1 if self.failed else 0

    def counts(self) -> dict[str, int]:
        """How many checks have each status."""
        counts = dict.fromkeys(("pass", "fail", "warn", "skip"), 0)
        for check in self.checks:
            counts[check.status] += 1
        return counts

    def timings(self) -> dict[str, object]:
        """The stream's figures: when its head and first byte came, and more."""
        stream = self.observations.stream
        head = stream.head if stream else None
        return {
            "protocol": head.version if head else None,
            "response_head": stream.head_at if stream else None,
            "first_byte": stream.first_byte_at if stream else None,
            "longest_silence": stream.longest_silence if head and stream else None,
            "events": stream.event_count if stream else 0,
            "bytes": stream.byte_count if stream else 0,
            "publish_latencies": [p.latency for p in self.observations.publishes],
        }

    def to_json(self) -> dict[str, object]:
        """The report as one JSON-ready document (seconds to 0.1 ms)."""
        obs = self.observations
        stream = obs.stream
        document: dict[str, object] = {
            "url": obs.url,
            "final_url": stream.final_url if stream else obs.url,
            "duration": obs.window,
            "idle": obs.idle,
            "timings": self.timings(),
            "result": "fail" if self.failed else "pass",
            "counts": self.counts(),
            "checks": [
                {
                    "name": check.name,
                    "status": check.status,
                    "reason": check.reason,
                    **check.details,
                }
                for check in self.checks
            ],
        }
        rounded = _rounded(document)
        assert isinstance(rounded, dict)
        return rounded


def _rounded(value: object) -> object:
    """``value`` with every float in it rounded to 0.1 ms."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(item) for item in value]
    return value


def judge(obs: Observations) -> Report:
    """Run every check on ``obs``."""
    return Report(obs, tuple(check(obs) for check in CHECKS))


_COLOURS = {"pass": "32", "fail": "1;31", "warn": "33", "skip": "2"}


def render_text(report: Report, colour: bool = False) -> str:
    """
    The report as a table, one check a line, with a summary.

    :param colour: Colour the statuses with ANSI escapes.
    """
    obs = report.observations
    timings = report.timings()
    lines = [f"twisted-sse check {obs.url}"]
    if timings["protocol"]:
        head_at = timings["response_head"]
        first = timings["first_byte"]
        figures = [
            f"{timings['protocol']}",
            f"watched {obs.window:g} s",
            f"{timings['events']} events",
            f"{timings['bytes']} bytes",
        ]
        if isinstance(head_at, float):
            figures.append(f"head {seconds(head_at)}")
        if isinstance(first, float):
            figures.append(f"first byte {seconds(first)}")
        lines.append(", ".join(figures))
    lines.append("")
    width = max(len(check.name) for check in report.checks)
    for check in report.checks:
        label = check.status.upper()
        if colour:
            label = f"\x1b[{_COLOURS[check.status]}m{label}\x1b[0m"
        pad = " " * (4 - len(check.status))
        lines.append(f"  {label}{pad}  {check.name:<{width}}  {check.reason}")
    counts = report.counts()
    lines.append("")
    lines.append(
        ("FAILED: " if report.failed else "OK: ")
        + f"{counts['fail']} failed, {counts['warn']} warnings, "
        f"{counts['pass']} passed, {counts['skip']} skipped"
    )
    return "\n".join(lines) + "\n"
