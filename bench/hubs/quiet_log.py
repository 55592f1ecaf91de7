"""
A log observer for ``twistd --logger quiet_log.observer`` (with this folder on
``PYTHONPATH``): warnings and errors only, as text on standard output.

``twistd sse --access-log off --stream-log off`` already builds no line per
request or per stream, and ``bench/hub.py`` runs it so.  What this observer
drops besides is the rest of the info lines (start-up, slow clients cut off,
broker connections regained), after they are built: for a run whose log
should hold nothing but problems.  It does not make ``twistd sse`` cheaper
to run: use the two options for that.
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
