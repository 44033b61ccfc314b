"""gunicorn settings for workers that outlive their master.

Stands in, deterministically, for workers busy with long requests when supervisord
stops a master without stopasgroup: the workers ignore SIGTERM, so the master waits
its graceful timeout and supervisord SIGKILLs it alone after stopwaitsecs; gunicorn's
own parent check (which would end them at their next request, a race) is disabled.
"""

import signal


def post_worker_init(worker):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker.is_parent_alive = lambda: True
