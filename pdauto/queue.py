"""The Redis connection, the queues, and the helpers that enqueue jobs.

Timeouts, result TTLs and failure TTLs are set here, in one place, so that
Redis memory stays bounded however many jobs run.
"""

import hashlib
import logging

import redis
from flask import current_app
from rq import Queue
from rq.job import Job

log = logging.getLogger(__name__)

QUEUE_NAMES = ("deliveries", "notices", "default")


def get_redis():
    """Return the app's Redis client, made once per app."""
    app = current_app._get_current_object()
    client = app.extensions.get("pdauto_redis")
    if client is None:
        client = redis.Redis.from_url(
            app.config["REDIS_URL"], socket_connect_timeout=2, socket_timeout=10
        )
        app.extensions["pdauto_redis"] = client
    return client


def redis_key(*parts):
    """Return a Redis key under this installation's prefix."""
    prefix = current_app.config["PDAUTO_REDIS_PREFIX"]
    return ":".join([prefix, *map(str, parts)])


def get_queue(name):
    prefix = current_app.config["PDAUTO_REDIS_PREFIX"]
    return Queue(f"{prefix}-{name}", connection=get_redis())


def all_queues():
    return [get_queue(name) for name in QUEUE_NAMES]


def _enqueue(queue_name, func, *args, at=None, job_id=None, timeout=60):
    config = current_app.config
    options = {
        "job_timeout": timeout,
        "result_ttl": config["JOB_RESULT_TTL_SECONDS"],
        "failure_ttl": config["JOB_FAILURE_TTL_SECONDS"],
        "ttl": 86400,
    }
    if job_id is not None:
        options["job_id"] = job_id
    queue = get_queue(queue_name)
    if at is not None:
        return queue.enqueue_at(at, func, *args, **options)
    return queue.enqueue(func, *args, **options)


def try_enqueue(queue_name, func, *args, **options):
    """Enqueue a job, or log and return None when Redis is unreachable.

    Call it only after the rows the job reads are committed. A job that could
    not be queued is not lost: the periodic sweep finds its rows and queues it.
    """
    try:
        return _enqueue(queue_name, func, *args, **options)
    except redis.RedisError as error:
        log.warning(
            "could not queue %s%r, the sweep will retry: %s",
            getattr(func, "__name__", func),
            args,
            error,
        )
        return None


def enqueue_dispatch(event_id):
    from . import jobs

    return try_enqueue("deliveries", jobs.dispatch_event, event_id)


def enqueue_delivery(delivery_id, at=None):
    from . import jobs

    return try_enqueue("deliveries", jobs.deliver, delivery_id, at=at)


def _notices_job_id(address):
    digest = hashlib.sha256(address.strip().lower().encode()).hexdigest()[:24]
    return f"{current_app.config['PDAUTO_REDIS_PREFIX']}-notices-{digest}"


def enqueue_notices(address, at=None):
    """Queue the failure emails of an address, now or at a later time.

    A later send has a fixed job id per address, so however often it is
    scheduled, one job is waiting per address.
    """
    from . import jobs

    job_id = _notices_job_id(address) if at is not None else None
    return try_enqueue("notices", jobs.send_failure_notices, address, at=at, job_id=job_id)


def notices_scheduled(address):
    """Return whether a later send of this address's failure emails is waiting."""
    try:
        return Job.exists(_notices_job_id(address), connection=get_redis())
    except redis.RedisError:
        return False
