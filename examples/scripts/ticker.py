"""Prints a line a second until stopped: try follow=true and stop on it."""
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM, exiting cleanly"), sys.exit(0)))
n = int(sys.argv[1]) if len(sys.argv) > 1 else 3600
for i in range(n):
    print(f"tick {i}", flush=True)
    time.sleep(1)
