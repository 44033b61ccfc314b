"""Sample app for deploytools' simulated fleet: a stdlib HTTP server run by supervisord.

GET /health reports which release the process really runs from (its cwd), so a deploy
can prove that a restart picked up the new code.
"""

import argparse
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sampleapp import views


def read_setting(name):
    """Value of NAME from ./.env (KEY=VALUE lines), or None."""
    try:
        with open(".env", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export "):]
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#") and key.strip() == name:
            return value.strip().strip("\"'")
    return None


def read_revision():
    try:
        with open("REVISION", encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def health_payload(mode):
    """(content type, body) of /health in the other modes real apps use: the git
    revision under "release" (REPORT_REVISION in ./.env stands in for a build that
    reports another one), or plain text naming the release."""
    release = os.path.basename(os.path.realpath(os.getcwd()))
    if mode == "text":
        return "text/plain; charset=utf-8", f"ok {release}\n".encode()
    revision = read_setting("REPORT_REVISION") or read_revision()
    body = {"status": "ok", "release": revision, "version": views.VERSION, "pid": os.getpid()}
    return "application/json", json.dumps(body).encode("utf-8")


class Handler(BaseHTTPRequestHandler):
    server_version = "sampleapp/" + views.VERSION

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/health" and getattr(views, "HEALTH_MODE", "ok") != "ok":
            self.broken_health(views.HEALTH_MODE)
        if path == "/health" and self.server.health_mode != "release":
            self.reply(views.HEALTH_STATUS, *health_payload(self.server.health_mode))
        elif path == "/health":
            status = views.HEALTH_STATUS
            body = json.dumps({
                "status": "ok" if status == 200 else "error",
                "release": os.path.basename(os.path.realpath(os.getcwd())),
                "revision": read_revision(),
                "version": views.VERSION,
                "pid": os.getpid(),
                "env": read_setting("DEMO_SETTING"),
            }).encode("utf-8")
            self.reply(status, "application/json", body)
        elif path == "/":
            self.reply(200, "text/plain; charset=utf-8", (views.greeting() + "\n").encode())
        else:
            self.reply(404, "text/plain; charset=utf-8", b"not found\n")

    def broken_health(self, mode):
        """Answer /health the way broken proxies and apps do (see write_sample_app)."""
        if mode == "garbage":
            self.wfile.write(b"this is not HTTP\r\n\r\n")
        else:  # "truncated": the body ends before its Content-Length
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"status": "ok", "rel')
        self.close_connection = True

    def reply(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # no request log on stderr


class Server(ThreadingHTTPServer):
    allow_reuse_address = True  # a restart rebinds at once, even with TIME_WAIT sockets
    daemon_threads = True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--health-mode", choices=("release", "revision", "text"),
                        default="release")
    args = parser.parse_args(argv)
    server = Server((args.bind, args.port), Handler)
    server.health_mode = args.health_mode

    def on_signal(signum, frame):
        # shutdown() waits for serve_forever(), which runs in this very thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"sampleapp {views.VERSION} pid {os.getpid()} on {args.bind}:{args.port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
