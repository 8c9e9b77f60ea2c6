"""Profile the worker's path from queued event to recorded attempt, in one process.

    .venv/bin/python -m bench.profile_worker [--events N] [--fanout N] [--sort KEY]

Commits N events (each matching one automation, or one event matching
--fanout automations), queues their dispatch jobs, and runs pdauto's worker
class in burst mode under cProfile, in this process. It prints the wall time
per webhook and the functions with the most time.
"""

import argparse
import cProfile
import io
import pstats
import sys
import time

from .environment import BenchEnvironment
from .receiver import Receiver
from .run import QUICK, Bench, write


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.profile_worker")
    parser.add_argument("--events", type=int, default=500, help="Events to deliver (default 500).")
    parser.add_argument(
        "--fanout",
        type=int,
        default=0,
        help="Instead, deliver one event matching this many automations.",
    )
    parser.add_argument(
        "--sort",
        default="cumulative",
        choices=["cumulative", "tottime"],
        help="Order of the profile listing (default cumulative).",
    )
    parser.add_argument("--limit", type=int, default=40, help="Functions to list (default 40).")
    args = parser.parse_args(argv)

    from pdauto.worker import make_worker

    from .measurements import commit_events, enqueue_dispatches

    environment = BenchEnvironment()
    receiver = Receiver()
    bench = None
    try:
        environment.start()
        receiver.start()
        bench = Bench(environment, receiver, QUICK)
        worker = make_worker(bench.app, name="profiled")
        # The pubsub thread only serves RQ's remote commands, so the harness
        # leaves it out of the profile.
        worker.subscribe = worker.unsubscribe = lambda: None
        # Warm up imports, connections and caches outside the timing.
        enqueue_dispatches(commit_events(bench, 10))
        worker.work(burst=True, with_scheduler=False)

        if args.fanout:
            bench.create_fanout_automations(args.fanout)
        plain = _deliver(bench, worker, args, profile=None)
        profile = cProfile.Profile()
        profiled = _deliver(bench, worker, args, profile=profile)

        output = io.StringIO()
        stats = pstats.Stats(profile, stream=output)
        stats.sort_stats(args.sort).print_stats(args.limit)
        count = args.fanout or args.events
        write(
            f"{count} webhooks in {plain:.2f} s: {plain / count * 1000:.2f} ms each",
            f"under cProfile: {profiled:.2f} s, {profiled / count * 1000:.2f} ms each "
            "(the profiler slows Python code down more than I/O)",
            output.getvalue(),
        )
    finally:
        if bench is not None:
            bench.close()
        receiver.stop()
        environment.stop()
    return 0


def _deliver(bench, worker, args, profile):
    """Queue the work, run the worker until the queues are empty; return seconds."""
    from pdauto import crm

    from .measurements import check_all_delivered, commit_events, enqueue_dispatches

    bench.receiver.reset()
    if args.fanout:
        count = args.fanout
        started = time.time()
        crm.create_record("company", bench.account_id, {"name": "Profiled"})
    else:
        count = args.events
        event_ids = commit_events(bench, count)
        started = time.time()
        enqueue_dispatches(event_ids)
    if profile is not None:
        profile.enable()
    worker.work(burst=True, with_scheduler=False)
    if profile is not None:
        profile.disable()
    finished = bench.receiver.wait_for_count(count, timeout=60)
    if not args.fanout:
        check_all_delivered(event_ids, count)
    return finished - started


if __name__ == "__main__":
    sys.exit(main())
