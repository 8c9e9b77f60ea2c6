"""Logging for the `pdauto` logger hierarchy: plain lines or JSON lines.

Each record carries the id of the RQ job that logged it, when there is one,
so a log line can be traced to the job on the RQ dashboard.
"""

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [job %(job_id)s] %(message)s"
JSON_FIELDS = ("asctime", "levelname", "name", "job_id", "message")


class JobContextFilter(logging.Filter):
    """Add `job_id`, the id of the RQ job being performed or "-", to each record."""

    def filter(self, record):
        from rq import get_current_job

        try:
            job = get_current_job()
        except Exception:  # RQ raises when no Redis connection is bound; no job then.
            job = None
        record.job_id = job.id if job is not None else "-"
        return True


def configure_logging(level="INFO", log_format="text", stream=None):
    """Send `pdauto` log records to `stream` (stderr by default) in the given format."""
    if log_format not in ("text", "json"):
        raise RuntimeError(f"PDAUTO_LOG_FORMAT must be text or json, got {log_format!r}")

    logger = logging.getLogger("pdauto")
    for handler in [h for h in logger.handlers if getattr(h, "pdauto_handler", False)]:
        logger.removeHandler(handler)

    handler = logging.StreamHandler(stream or sys.stderr)
    handler.pdauto_handler = True
    handler.addFilter(JobContextFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter(list(JSON_FIELDS), rename_fields={"asctime": "time"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    return handler
