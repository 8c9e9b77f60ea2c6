"""Prometheus metrics shared by every web and worker process.

Workers count attempts and emails in Redis hashes, so one scrape of any web
process reads the totals of all processes on all machines. Queue depths and
deliveries by state are read when the scrape happens.
"""

import logging

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from . import queue

log = logging.getLogger(__name__)

# Upper bounds of the attempt latency buckets, in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
INF = "+Inf"


def _key(name):
    return queue.redis_key("metrics", name)


def _bucket(seconds):
    for bound in LATENCY_BUCKETS:
        if seconds <= bound:
            return str(bound)
    return INF


def record_attempt(kind, seconds):
    """Count one delivery attempt by outcome kind and add its duration to the histogram."""
    record_attempts([(kind, seconds)])


def record_attempts(attempts):
    """Count (outcome kind, seconds) pairs of attempts in one round trip to Redis."""
    if not attempts:
        return
    try:
        pipeline = queue.get_redis().pipeline(transaction=False)
        for kind, seconds in attempts:
            pipeline.hincrby(_key("attempts"), kind, 1)
            pipeline.hincrby(_key("latency"), _bucket(seconds), 1)
            pipeline.hincrbyfloat(_key("latency"), "sum", seconds)
        pipeline.execute()
    except redis.RedisError as error:
        log.warning("metrics: %d attempts not counted: %s", len(attempts), error)


def record_emails(outcome, count=1):
    """Count failure emails by outcome: sent, held, smtp_down, rejected or unknown."""
    try:
        queue.get_redis().hincrby(_key("emails"), outcome, count)
    except redis.RedisError as error:
        log.warning("metrics: email %s not counted: %s", outcome, error)


class Collector:
    """Build the metric families at scrape time from Redis and the database."""

    def __init__(self, app):
        self.app = app

    def collect(self):
        with self.app.app_context():
            connection = queue.get_redis()
            yield self._attempts(connection)
            yield self._latency(connection)
            yield self._emails(connection)
            yield self._queue_depths()
            yield self._deliveries_by_state()

    def _attempts(self, connection):
        family = CounterMetricFamily(
            "pdauto_delivery_attempts", "Webhook delivery attempts by outcome.", labels=["outcome"]
        )
        for kind, count in sorted(_decoded(connection.hgetall(_key("attempts"))).items()):
            family.add_metric([kind], int(count))
        return family

    def _latency(self, connection):
        raw = _decoded(connection.hgetall(_key("latency")))
        buckets = []
        total = 0
        for bound in [*map(str, LATENCY_BUCKETS), INF]:
            total += int(raw.get(bound, 0))
            buckets.append((bound, total))
        return HistogramMetricFamily(
            "pdauto_delivery_attempt_seconds",
            "Time from the start of an attempt to its outcome.",
            buckets=buckets,
            sum_value=float(raw.get("sum", 0)),
        )

    def _emails(self, connection):
        family = CounterMetricFamily(
            "pdauto_failure_emails",
            "Failure emails by outcome; held counts sends that the limit held back.",
            labels=["outcome"],
        )
        for outcome, count in sorted(_decoded(connection.hgetall(_key("emails"))).items()):
            family.add_metric([outcome], int(count))
        return family

    def _queue_depths(self):
        family = GaugeMetricFamily(
            "pdauto_queue_jobs", "Jobs in each RQ queue and registry.", labels=["queue", "state"]
        )
        for rq_queue in queue.all_queues():
            family.add_metric([rq_queue.name, "queued"], rq_queue.count)
            family.add_metric([rq_queue.name, "started"], rq_queue.started_job_registry.count)
            family.add_metric([rq_queue.name, "scheduled"], rq_queue.scheduled_job_registry.count)
            family.add_metric([rq_queue.name, "failed"], rq_queue.failed_job_registry.count)
        return family

    def _deliveries_by_state(self):
        from .extensions import db
        from .models import Delivery

        family = GaugeMetricFamily(
            "pdauto_deliveries", "Deliveries in the database by state.", labels=["state"]
        )
        rows = db.session.execute(
            db.select(Delivery.state, db.func.count()).group_by(Delivery.state)
        ).all()
        for state, count in sorted(rows):
            family.add_metric([state], count)
        db.session.remove()
        return family


def _decoded(mapping):
    return {
        (key.decode() if isinstance(key, bytes) else key): (
            value.decode() if isinstance(value, bytes) else value
        )
        for key, value in mapping.items()
    }
