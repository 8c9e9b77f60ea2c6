"""The RQ worker that runs pdauto's jobs inside the app context, and the sweep."""

import logging
import threading

import redis
from rq import SimpleWorker

from . import deliveries, jobs, queue

log = logging.getLogger(__name__)


class AppWorker(SimpleWorker):
    """Run each job in the worker process, inside the Flask app context.

    SimpleWorker does not fork per job, so a job costs milliseconds, not a
    process start, and database and HTTP connections stay open between jobs.
    """

    app = None
    # The DispatchListener of this process, stopped with the worker.
    listener = None

    def request_stop(self, signum, frame):
        """Stop the dispatch listener with RQ's loop, so both finish their work in hand."""
        if self.listener is not None:
            self.listener.stop()
        super().request_stop(signum, frame)

    def unsubscribe(self):
        """Stop the pubsub thread, then unsubscribe as RQ does.

        RQ 3.0 unsubscribes first, so its pubsub thread reads the UNSUBSCRIBE
        reply while still running and waits up to 60 s for another message.
        RQ then waits 1 s for the thread, so a worker took at least 1 s to stop
        (and 60 s in some test runs). Stopped first, the thread ends on the reply.
        """
        if self.pubsub_thread:
            self.pubsub_thread.stop()
        super().unsubscribe()

    def heartbeat(self, timeout=None, pipeline=None):
        """Send RQ's heartbeat in one round trip to Redis.

        Without a pipeline, RQ 3.0 sends its three commands one by one, and it
        sends a heartbeat between taking a job and starting it.
        """
        if pipeline is not None:
            return super().heartbeat(timeout, pipeline)
        with self.connection.pipeline(transaction=False) as batch:
            super().heartbeat(timeout, batch)
            batch.execute()
        return None

    def perform_job(self, job, queue, execution):
        with self.app.app_context():
            try:
                return super().perform_job(job, queue, execution)
            finally:
                from .extensions import db

                db.session.remove()


def run_sweep_once(app):
    """Run the sweep if no other process holds the sweep lock; return its counts."""
    with app.app_context():
        client = queue.get_redis()
        interval = app.config["SWEEP_INTERVAL_SECONDS"]
        lock = client.lock(
            queue.redis_key("sweep-lock"), timeout=max(interval * 4, 60), blocking=False
        )
        if not lock.acquire(blocking=False):
            return None
        try:
            return deliveries.sweep()
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass
            from .extensions import db

            db.session.remove()


class SweepThread(threading.Thread):
    """Run the sweep every SWEEP_INTERVAL_SECONDS until stopped."""

    def __init__(self, app):
        super().__init__(name="pdauto-sweep", daemon=True)
        self.app = app
        self.stopped = threading.Event()

    def run(self):
        interval = self.app.config["SWEEP_INTERVAL_SECONDS"]
        while not self.stopped.wait(interval):
            try:
                run_sweep_once(self.app)
            except Exception:
                # The next round tries again; a sweep must never stop the worker.
                log.exception("sweep failed")

    def stop(self):
        self.stopped.set()


class DispatchListener(threading.Thread):
    """Dispatch waiting events as soon as a commit wakes this thread.

    RQ's enqueue, dequeue and job bookkeeping took about 5 ms per job on the
    benchmark machine, half of one webhook's latency (docs/benchmarks.md).
    While a listener runs, queue.request_dispatch wakes it through a Redis list
    in place of queuing an RQ job. The job stays the path when none runs.
    """

    # Seconds of each wait, so stop() takes effect within about this long.
    WAIT_SECONDS = 1

    # NOTE: unlike an RQ job, a batch here has no hard timeout. RQ raises the
    # socket timeout of the Redis client it shares with the app, so a Redis call
    # that hangs could hold a batch past its deliveries' lease.

    def __init__(self, app):
        super().__init__(name="pdauto-dispatch", daemon=True)
        self.app = app
        self.stopped = threading.Event()

    def run(self):
        from .extensions import db

        with self.app.app_context():
            sender = jobs.make_sender()
            redis_failing = False
            while not self.stopped.is_set():
                try:
                    woken = queue.wait_for_dispatch_wake(self.WAIT_SECONDS)
                except redis.RedisError as error:
                    if not redis_failing:
                        log.warning(
                            "dispatch listener cannot reach Redis, retrying each second: %s", error
                        )
                    redis_failing = True
                    self.stopped.wait(self.WAIT_SECONDS)
                    continue
                redis_failing = False
                if not woken:
                    continue
                if self.stopped.is_set():
                    break
                try:
                    jobs.dispatch_batch(sender)
                except Exception:
                    # The events stay waiting, and the next wake or the sweep takes them.
                    log.exception("dispatch listener failed to dispatch a batch")
                    db.session.rollback()
                finally:
                    db.session.remove()
            try:
                # Commits may have woken this listener after its last batch: a dispatch
                # job, or another listener, reads their events.
                queue.stop_listening()
                queue.request_dispatch()
            except redis.RedisError as error:
                log.warning("dispatch listener could not hand over on stopping: %s", error)

    def stop(self):
        self.stopped.set()


def make_worker(app, name=None):
    with app.app_context():
        connection = queue.get_redis()
        queues = queue.all_queues()
    worker_class = type("PdautoWorker", (AppWorker,), {"app": app})
    return worker_class(queues, connection=connection, name=name)
