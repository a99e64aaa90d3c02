"""Log formats: LOG_FORMAT=json writes one JSON object per line, for log collectors."""

import json
import logging
from datetime import UTC, datetime

# Fields that the access log passes as ``extra``, copied into the JSON line.
EXTRA_FIELDS = ("client", "request", "status", "bytes")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EXTRA_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)
