"""A webhook receiver for trying pdauto out on one machine.

    python -m pdauto.demo_receiver [--port 8000] [--status 200]

It listens on 127.0.0.1 and prints each request's method, path, webhook
headers and body, then responds with the chosen status.
"""

import argparse
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHOWN_HEADERS = ("content-type", "webhook-id", "webhook-timestamp", "webhook-signature")


def make_handler(status, out):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, 1_000_000))
            print(f"{self.command} {self.path}", file=out)
            for name in SHOWN_HEADERS:
                if name in self.headers:
                    print(f"  {name}: {self.headers[name]}", file=out)
            print(f"  body: {body.decode('utf-8', 'replace')}", file=out, flush=True)
            reply = f'{{"received": true, "status": {status}}}'.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format, *args):
            pass  # do_POST prints each request in full instead.

    return Handler


def main(argv=None, out=sys.stdout):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--status", type=int, default=200, help="the HTTP status of each response")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.status, out))
    print(
        f"demo receiver: http://127.0.0.1:{server.server_port}/hook responds {args.status};"
        " Ctrl-C stops it",
        file=out,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
