#!/usr/bin/env python3
"""How long a flush to disk takes on this machine, idle and with both CPUs busy.

The usage log answers a VALID call only once `fdatasync` returned after its record, so the
tail of `fdatasync` is a floor under the tail of verify in `durability = "power-loss"`. This
writes 4 KiB and flushes it in a loop for a few seconds, first on an idle machine, then beside
one busy-looping process per CPU, and prints the percentiles and the flushes that took over
3 ms with the time they ended (seconds within the run), so a periodic stall shows as such.

    python3 bench/fsync_stalls.py [seconds per phase, default 4] [dir, default bench/out]
"""
import os
import subprocess
import sys
import time

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
DIR = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "out")
SIZE = 64 << 20


def phase(name):
    path = os.path.join(DIR, "fsync-probe.bin")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        # Blocks that exist already, as the usage log's do: a flush rewrites data, not metadata.
        os.ftruncate(fd, 0)
        os.write(fd, b"\0" * SIZE)
        os.fsync(fd)
        block, offset, took, slow = b"x" * 4096, 0, [], []
        start = time.monotonic()
        while time.monotonic() - start < SECONDS:
            os.pwrite(fd, block, offset)
            t = time.perf_counter()
            os.fdatasync(fd)
            d = time.perf_counter() - t
            took.append(d)
            if d > 0.003:
                slow.append((round(time.monotonic() - start, 3), round(d * 1000, 1)))
            offset = (offset + len(block)) % SIZE
    finally:
        os.close(fd)
        os.unlink(path)
    took.sort()
    n = len(took)
    pct = lambda p: took[min(n - 1, int(n * p))] * 1000
    print(f"{name}: {n} flushes, p50 {pct(0.5):.3f} ms, p99 {pct(0.99):.3f} ms, "
          f"p99.9 {pct(0.999):.3f} ms, max {took[-1] * 1000:.1f} ms, over 3 ms: {len(slow)}")
    if slow:
        print("  over 3 ms (ended at s, took ms):", slow[:12], "..." if len(slow) > 12 else "")


os.makedirs(DIR, exist_ok=True)
phase("idle")
burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
try:
    time.sleep(0.5)
    phase(f"{len(burners)} CPUs busy")
finally:
    for b in burners:
        b.kill()
