"""A fast webhook receiver on loopback, in its own process.

It responds to every POST with 204 over HTTP/1.1 keep-alive and counts what it
receives in shared memory, so the measuring process can wait for N requests
without sharing the receiver's GIL.
"""

import ctypes
import multiprocessing
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    state = None  # the _SharedState, set in the receiver process

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        received_at = time.time()
        state = self.state
        with state.count.get_lock():
            state.count.value += 1
            state.last_received_at.value = received_at
        if state.notify.value:
            state.arrived.release()
        self.send_response(204)
        self.end_headers()

    def log_message(self, format, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


class _SharedState:
    def __init__(self, context):
        self.count = context.Value(ctypes.c_long, 0)
        self.last_received_at = context.Value(ctypes.c_double, 0.0)
        self.port = context.Value(ctypes.c_int, 0)
        # When notify is set, each request releases `arrived` once.
        self.notify = context.Value(ctypes.c_bool, False, lock=False)
        self.arrived = context.Semaphore(0)
        self.ready = context.Event()


def _serve(state):
    _Handler.state = state
    server = _Server(("127.0.0.1", 0), _Handler)
    state.port.value = server.server_address[1]
    state.ready.set()
    server.serve_forever(poll_interval=0.5)


class Receiver:
    """The receiver process and the counters it shares with this process."""

    def __init__(self):
        context = multiprocessing.get_context("spawn")
        self._state = _SharedState(context)
        self._process = context.Process(
            target=_serve, args=(self._state,), name="bench-receiver", daemon=True
        )

    def start(self):
        self._process.start()
        deadline = time.monotonic() + 30
        while not self._state.ready.wait(timeout=0.1):
            if not self._process.is_alive():
                raise RuntimeError(
                    f"the benchmark receiver exited with status {self._process.exitcode}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the benchmark receiver did not start within 30 s")
        self.port = self._state.port.value
        return self

    def stop(self):
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=10)

    def url(self, path="/hook"):
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def pid(self):
        return self._process.pid

    @property
    def count(self):
        return self._state.count.value

    @property
    def last_received_at(self):
        """The time.time() at which the latest request body was read."""
        return self._state.last_received_at.value

    def reset(self):
        with self._state.count.get_lock():
            self._state.count.value = 0
            self._state.last_received_at.value = 0.0

    def wait_for_count(self, count, timeout):
        """Wait until `count` requests have arrived since the last reset; raise on timeout."""
        deadline = time.monotonic() + timeout
        while self.count < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the receiver got {self.count} of {count} requests in {timeout:g} s"
                )
            time.sleep(0.005)
        return self.last_received_at

    def notify_each(self, enabled):
        """Make each request release a semaphore that wait_for_one acquires."""
        self._state.notify.value = enabled
        while self._state.arrived.acquire(block=False):
            pass

    def wait_for_one(self, timeout):
        """Block until one more request arrives (with notify_each on); return its time."""
        if not self._state.arrived.acquire(timeout=timeout):
            raise TimeoutError(f"no request reached the receiver in {timeout:g} s")
        return self.last_received_at
