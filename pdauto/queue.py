"""The Redis connection, the queues, and the helpers that enqueue jobs.

Timeouts, result TTLs and failure TTLs are set here, in one place, so that
Redis memory stays bounded however many jobs run. The jobs below keep no
result in Redis, because the database records what they did. Each event or
delivery has at most one waiting job, because the job id is derived from the
row id and a job that is already waiting is not queued again.
"""

import contextlib
import hashlib
import logging

import redis
from flask import current_app
from rq import Queue
from rq.job import Job, JobStatus

log = logging.getLogger(__name__)

# Workers take jobs in this order. Failure emails come first, because they are few
# and a flood of retries would otherwise hold them back.
QUEUE_NAMES = ("notices", "deliveries", "default")


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


# How long the flag that a dispatch job is queued may live without the job clearing it.
DISPATCH_FLAG_SECONDS = 30
# How long the mark of a running dispatch listener lives. Each listener renews it
# before every wait, and a wait is shorter than this.
DISPATCH_LISTENER_SECONDS = 3


def get_queue(name):
    prefix = current_app.config["PDAUTO_REDIS_PREFIX"]
    return Queue(f"{prefix}-{name}", connection=get_redis())


def all_queues():
    return [get_queue(name) for name in QUEUE_NAMES]


# Jobs in these states will run without being queued again.
WAITING_STATUSES = frozenset({JobStatus.QUEUED.value, JobStatus.SCHEDULED.value})


def _enqueue(queue_name, func, *args, at=None, job_id=None, timeout=60, result_ttl=None):
    config = current_app.config
    if result_ttl is None:
        result_ttl = config["JOB_RESULT_TTL_SECONDS"]
    options = {
        "job_timeout": timeout,
        "result_ttl": result_ttl,
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


def _row_job_id(kind, row_id):
    return f"{current_app.config['PDAUTO_REDIS_PREFIX']}-{kind}-{row_id}"


def _waiting_job_ids(job_ids):
    """Return the ids among `job_ids` whose job is queued or scheduled to run."""
    client = get_redis()
    pipeline = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipeline.hget(Job.key_for(job_id), "status")
    statuses = pipeline.execute()
    return {
        job_id
        for job_id, status in zip(job_ids, statuses, strict=True)
        if status is not None and status.decode() in WAITING_STATUSES
    }


def _enqueue_row_jobs(kind, func, row_ids):
    """Queue `func(row_id)` for each row without a waiting job, and return how many were queued.

    A job that has started is queued again, because its worker may have died.
    If that worker is in fact alive, the second job finds the row already
    claimed and does nothing. Raises redis.RedisError when Redis is unreachable.
    """
    job_ids = {row_id: _row_job_id(kind, row_id) for row_id in row_ids}
    waiting = _waiting_job_ids(list(job_ids.values()))
    queued = 0
    for row_id, job_id in job_ids.items():
        if job_id in waiting:
            continue
        # The database stores what the job did, so no result is kept in Redis.
        _enqueue("deliveries", func, row_id, job_id=job_id, result_ttl=0)
        queued += 1
    return queued


def _try_enqueue_row_jobs(kind, func, row_ids):
    """Like _enqueue_row_jobs, but log and return 0 when Redis is unreachable."""
    if not row_ids:
        return 0
    try:
        return _enqueue_row_jobs(kind, func, row_ids)
    except redis.RedisError as error:
        log.warning(
            "could not queue %s jobs for %d rows (first %s), the sweep will retry: %s",
            kind,
            len(row_ids),
            row_ids[0],
            error,
        )
        return 0


def enqueue_dispatch(event_id):
    """Make sure a dispatch job will read a committed event; see enqueue_dispatches."""
    return enqueue_dispatches([event_id])


def enqueue_dispatches(event_ids):
    """Make sure committed events will be dispatched, and return 1 if a job was queued.

    A dispatch listener, when one runs, is woken and reads them at once.
    Otherwise one job dispatches every waiting event in batches, so a burst of
    changes costs a few jobs, not one each. A flag in Redis marks that such a
    job is queued. The job clears it before it reads the events, so an event
    committed before the flag was seen is read by that job. The flag expires,
    so a job lost with its flag still set delays events only until the flag
    expires and the next commit or sweep queues a job.
    """
    if not event_ids:
        return 0
    return request_dispatch()


def request_dispatch():
    """Wake a dispatch listener, or else queue a dispatch job unless one is queued.

    Returns 1 if this call queued a job. A listener (pdauto.worker.DispatchListener)
    dispatches at once, without RQ's enqueue and per-job costs. The wake is one
    entry in a list, so many commits before a listener reads it cost one read.
    """
    from . import jobs

    try:
        client = get_redis()
        with client.pipeline(transaction=False) as pipeline:
            pipeline.exists(_listening_key())
            pipeline.lpush(_wake_key(), 1)
            pipeline.ltrim(_wake_key(), 0, 0)
            listening = pipeline.execute()[0]
        if listening:
            return 0
        if not client.set(_dispatch_flag_key(), 1, nx=True, ex=DISPATCH_FLAG_SECONDS):
            return 0
        _enqueue("deliveries", jobs.dispatch_waiting, result_ttl=0)
    except redis.RedisError as error:
        log.warning("could not queue a dispatch job, the sweep will dispatch the events: %s", error)
        with contextlib.suppress(redis.RedisError):
            get_redis().delete(_dispatch_flag_key())
        return 0
    return 1


def wait_for_dispatch_wake(timeout):
    """Mark a listener as running, then wait up to `timeout` seconds for a wake.

    Returns whether a commit woke it. The mark expires after DISPATCH_LISTENER_SECONDS,
    so commits queue dispatch jobs again soon after the last listener stops.
    """
    with get_redis().pipeline(transaction=False) as pipeline:
        pipeline.set(_listening_key(), 1, ex=DISPATCH_LISTENER_SECONDS)
        pipeline.blpop([_wake_key()], timeout=timeout)
        return pipeline.execute()[1] is not None


def stop_listening():
    """Delete the listeners' mark, so commits queue dispatch jobs until a listener renews it."""
    get_redis().delete(_listening_key())


def clear_dispatch_flag():
    """Let the next commit queue a dispatch job; call before reading the waiting events."""
    get_redis().delete(_dispatch_flag_key())


def _dispatch_flag_key():
    return f"{current_app.config['PDAUTO_REDIS_PREFIX']}:dispatch-queued"


def _wake_key():
    return f"{current_app.config['PDAUTO_REDIS_PREFIX']}:dispatch-wake"


def _listening_key():
    return f"{current_app.config['PDAUTO_REDIS_PREFIX']}:dispatch-listening"


def enqueue_event_dispatches(event_ids):
    """Queue a job for each event's own dispatch unless one is waiting, and return how many.

    The sweep uses these for events that waited too long, so that one stuck
    event does not depend on the batch job.
    """
    from . import jobs

    return _try_enqueue_row_jobs("dispatch", jobs.dispatch_event, list(event_ids))


def enqueue_delivery(delivery_id):
    """Queue an attempt of one delivery unless one is already waiting, and return 1 or 0.

    Retries are not scheduled in Redis. The delivery row keeps the time of its
    next attempt, and the sweep queues it once that time has come.
    """
    return enqueue_deliveries([delivery_id])


def enqueue_deliveries(delivery_ids):
    """Queue an attempt of each delivery without a waiting job, and return how many."""
    from . import jobs

    return _try_enqueue_row_jobs("deliver", jobs.deliver, list(delivery_ids))


def _notices_job_id(address):
    digest = hashlib.sha256(address.strip().lower().encode()).hexdigest()[:24]
    return f"{current_app.config['PDAUTO_REDIS_PREFIX']}-notices-{digest}"


def enqueue_notices(address, at=None):
    """Queue the failure emails of an address, now or at a later time.

    A later send has a fixed job id per address, so however often it is
    scheduled, one job is waiting per address. The notice rows record what
    was sent, so no result is kept in Redis.
    """
    from . import jobs

    job_id = _notices_job_id(address) if at is not None else None
    return try_enqueue(
        "notices", jobs.send_failure_notices, address, at=at, job_id=job_id, result_ttl=0
    )


def notices_scheduled(address):
    """Return whether a later send of this address's failure emails is waiting."""
    try:
        return Job.exists(_notices_job_id(address), connection=get_redis())
    except redis.RedisError:
        return False
