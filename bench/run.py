"""Measure pdauto's delivery path against the raw HTTP client, in one run.

    .venv/bin/python -m bench.run [--quick] [--only a,b,...]

It starts a private redis-server, a fast receiver on 127.0.0.1 in its own
process, temporary SQLite databases built by the migrations, and real worker
processes (`flask --app wsgi worker`). Then it prints one table row per
measurement with pdauto, the baseline, their ratio and the target. The exit
status is 0 when every measurement ran, whether or not it met its target.
"""

import argparse
import os
import platform
import sqlite3
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from importlib.metadata import version

from .environment import ROOT, BenchEnvironment, make_app, migrate_database
from .receiver import Receiver


@dataclass(frozen=True)
class Sizes:
    loop_posts: int  # raw POSTs in a baseline loop (a, b)
    latency_samples: int  # single events and single POSTs (a, c)
    throughput_events: int  # events per throughput run (b)
    fanout: int  # automations matching one event (d)
    limit_decisions: int  # limit checks and PINGs (e)
    log_small: int  # attempts in the small delivery log (f)
    log_large: int  # attempts in the large delivery log (f)
    memory_deliveries: int  # deliveries through one worker (g)


FULL = Sizes(2000, 200, 2000, 1000, 20_000, 1000, 1_000_000, 100_000)
QUICK = Sizes(300, 20, 60, 50, 2000, 1000, 20_000, 300)

MEASUREMENT_KEYS = "abcdefg"


class Bench:
    """State shared by the measurements: the environment, the receiver, the app, the workers."""

    def __init__(self, environment, receiver, sizes):
        self.environment = environment
        self.receiver = receiver
        self.sizes = sizes
        self.workers = []
        self.fanout_created = 0
        self.app = make_app()
        migrate_database(self.app)
        self._context = self.app.app_context()
        self._context.push()
        self.account_id = self._create_account()

    def close(self):
        from pdauto.extensions import db

        db.session.remove()
        self._context.pop()

    def _create_account(self):
        from pdauto.extensions import db
        from pdauto.models import Account, Action, Automation

        account = Account(name="Bench")
        db.session.add(account)
        db.session.flush()
        automation = Automation(
            account_id=account.id,
            name="Person created",
            event_model="person",
            event_action="created",
        )
        automation.actions.append(Action(kind="call_api", url=self.receiver.url("/hook")))
        db.session.add(automation)
        db.session.commit()
        return account.id

    def sender(self):
        """Return the Sender a worker uses, built from the same settings."""
        from pdauto.jobs import get_sender

        return get_sender()

    def ensure_workers(self, count):
        """Run exactly `count` warm workers; return them."""
        from .measurements import check_all_delivered, commit_events, enqueue_dispatches

        while len(self.workers) > count:
            self.workers.pop().stop()
        if len(self.workers) < count:
            started = self.environment.start_workers(count - len(self.workers))
            self.workers.extend(started)
            # Warm each new worker: imports, the database connection, the HTTP pool.
            warm = 10 * count
            self.receiver.reset()
            event_ids = commit_events(self, warm)
            enqueue_dispatches(event_ids)
            self.receiver.wait_for_count(warm, timeout=60)
            check_all_delivered(event_ids, warm)
        return list(self.workers)

    def create_fanout_automations(self, count):
        """Create active "company created" automations until there are `count`."""
        from pdauto.extensions import db
        from pdauto.models import Action, Automation

        rows = []
        for index in range(self.fanout_created, count):
            automation = Automation(
                account_id=self.account_id,
                name=f"Fan-out {index + 1}",
                event_model="company",
                event_action="created",
            )
            automation.actions.append(Action(kind="call_api", url=self.receiver.url("/fanout")))
            rows.append(automation)
        db.session.add_all(rows)
        db.session.commit()
        db.session.remove()
        self.fanout_created = max(self.fanout_created, count)


def machine_details(redis_client):
    """Return (name, value) pairs describing the machine and the software measured."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    packages = ", ".join(
        f"{name} {version(name)}"
        for name in ("Flask", "SQLAlchemy", "rq", "redis", "requests", "urllib3")
    )
    return [
        ("code", code_version()),
        ("CPU", f"{cpu}, {os.cpu_count()} cores"),
        ("Linux", platform.release()),
        ("Python", platform.python_version()),
        ("Redis server", redis_client.info("server")["redis_version"]),
        ("SQLite", sqlite3.sqlite_version),
        ("packages", packages),
    ]


def code_version():
    """Return the git commit measured, noting uncommitted changes to pdauto/."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        changed = _git("status", "--porcelain", "--", "pdauto")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit} with uncommitted changes in pdauto/" if changed else commit


def _git(*args):
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def load_average():
    return os.getloadavg()[0]


def measurement_functions():
    from . import delivery_log, measurements

    return {
        "a": measurements.measure_raw_client,
        "b": measurements.measure_throughput,
        "c": measurements.measure_latency,
        "d": measurements.measure_fanout,
        "e": measurements.measure_limit_decisions,
        "f": delivery_log.measure_delivery_log,
        "g": measurements.measure_memory,
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Use small sizes everywhere (a smoke run of well under a minute).",
    )
    parser.add_argument(
        "--only",
        default=MEASUREMENT_KEYS,
        help="Comma-separated measurements to run, from a to g (default: all).",
    )
    args = parser.parse_args(argv)
    keys = [key.strip() for key in args.only.replace(",", " ").split() if key.strip()]
    keys = [key for part in keys for key in (part if len(part) > 1 else [part])]
    unknown = sorted(set(keys) - set(MEASUREMENT_KEYS))
    if unknown:
        parser.error(f"unknown measurement {', '.join(unknown)}; choose from a to g")
    args.keys = [key for key in MEASUREMENT_KEYS if key in keys]
    return args


def format_table(results):
    lines = [
        "| | measurement | pdauto | baseline | ratio | target | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for result in results:
        ratio = "—" if result.ratio is None else f"{result.ratio:.2f}"
        met = {True: "yes", False: "**no**", None: "—"}[result.met]
        lines.append(
            f"| {result.key} | {result.title} | {result.pdauto} | {result.baseline} "
            f"| {ratio} | {result.target} | {met} |"
        )
    return "\n".join(lines)


def format_notes(results):
    return "\n".join(f"- {result.key}: {note}" for result in results for note in result.notes)


def run(args):
    sizes = QUICK if args.quick else FULL
    environment = BenchEnvironment()
    receiver = Receiver()
    bench = None
    results, failed, details = [], [], []
    try:
        environment.start()
        receiver.start()
        bench = Bench(environment, receiver, sizes)
        client = environment.redis_client()
        details = machine_details(client)
        client.close()
        functions = measurement_functions()
        for key in args.keys:
            started = time.perf_counter()
            load = load_average()
            progress(f"measuring {key}")
            try:
                rows = functions[key](bench)
            except Exception:
                traceback.print_exc()
                progress(f"measurement {key} failed")
                failed.append(key)
                continue
            seconds = time.perf_counter() - started
            rows[-1].notes.append(
                f"took {seconds:.1f} s; 1-minute load average {load:.2f} before, "
                f"{load_average():.2f} after"
            )
            results.extend(rows)
            progress(f"measured {key} in {seconds:.1f} s")
    finally:
        if bench is not None:
            bench.close()
        receiver.stop()
        environment.stop(keep_files=bool(failed))
        if failed:
            progress(f"worker logs kept in {environment.directory}")

    lines = [f"{name}: {value}" for name, value in details]
    lines += [f"sizes: {'quick' if args.quick else 'full'} {sizes}", ""]
    lines += [format_table(results), "", format_notes(results)]
    if failed:
        lines += ["", f"failed: {', '.join(failed)} (tracebacks above)"]
    write(*lines)
    return 1 if failed else 0


def write(*lines):
    """Write lines to standard output, the command's report."""
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


def progress(message):
    """Write a progress line to standard error.

    The migrations configure the logging module from alembic.ini, which turns
    off loggers made before them, so progress is written directly.
    """
    sys.stderr.write(f"bench: {message}\n")
    sys.stderr.flush()


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    status = run(args)
    write("", f"total time {time.perf_counter() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
