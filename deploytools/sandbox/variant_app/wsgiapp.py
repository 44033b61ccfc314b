"""Sample WSGI app for gunicorn: /health reports the release the worker runs from."""

import json
import os

from sampleapp import views


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/health":
        body = json.dumps({
            "status": "ok",
            "release": os.path.basename(os.path.realpath(os.getcwd())),
            "version": views.VERSION,
            "pid": os.getpid(),
            "ppid": os.getppid(),
        }).encode("utf-8")
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    body = (views.greeting() + "\n").encode("utf-8")
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]
