"""gunicorn settings for pdauto: threaded workers, so a slow Test Now blocks no one.

Test Now waits for the user's URL for up to TEST_NOW_TIMEOUT_SECONDS. Each
such wait takes one thread, and the other threads keep serving pages.
Every setting can be changed with the environment variable named beside it.
"""

import os

bind = os.environ.get("PDAUTO_BIND", f"127.0.0.1:{os.environ.get('PORT', '5000')}")
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("PDAUTO_WEB_THREADS", "8"))
# Longer than the longest Test Now, so gunicorn does not kill a thread waiting on one.
timeout = int(os.environ.get("PDAUTO_WEB_TIMEOUT", "60"))
graceful_timeout = 20
keepalive = 5
accesslog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
