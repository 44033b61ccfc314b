"""Sample background worker: sleeps until supervisord stops it."""

import signal
import sys
import time


def main():
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
