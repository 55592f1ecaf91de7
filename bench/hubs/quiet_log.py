"""
A log observer for ``twistd --logger quiet_log.observer`` (with this folder on
``PYTHONPATH``): warnings and errors only, as text on standard output.

``bench/hub.py`` runs ``twistd sse`` with it because the other hubs run
without an access log: this drops the access log's line per request and the
lines ``twistd sse`` logs when a stream opens and closes.  Those events are
still built and then dropped here, so a little of their cost remains.
"""

from __future__ import annotations

import sys

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    textFileLogObserver,
)


def observer() -> ILogObserver:
    """The observer factory ``twistd --logger`` calls: warnings and up."""
    return FilteringLogObserver(
        textFileLogObserver(sys.stdout),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
    )
