"""Celery + Redis no-op throughput: the general task queue a DataHub team might run instead of Outpost.

Starts its own redis-server on a free loopback port, `--workers` Celery worker processes with `--concurrency`
prefork children each, submits `--tasks` no-op tasks (late acks, results stored in Redis) from `--submitters`
threads, and measures from the first submit to the last result stored. `--durable` runs Redis with
`appendfsync always` (every write fsynced before it is acknowledged, like Outpost's SQLite with
synchronous=FULL); without it Redis keeps everything in memory only.

`--pool threads` runs each worker's children as threads instead of processes. `--best` tries several
configurations in one sitting (10 x 8 prefork, 2 x 1 and 1 x 2 prefork, 1 x 8 threads, 1 x 4 prefork) and reports
each and the best, so a comparison is made against Celery at its best on this machine.

Run through `bench/run.sh celery [args]`, which installs redis-server and Celery first (bench/setup-celery.sh).
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

APP = """
import os
from celery import Celery

app = Celery("noop", broker=os.environ["BENCH_REDIS"], backend=os.environ["BENCH_REDIS"])
app.conf.task_acks_late = True
app.conf.worker_hijack_root_logger = False


@app.task
def noop():
    return None
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pids):
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # utime, stime, cutime, cstime (children: the prefork pool)
            total += sum(int(v) for v in fields[11:15]) / tick
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]
    except OSError:
        return []


# (workers, children per worker, pool) tried by --best.
CONFIGURATIONS = [(10, 8, "prefork"), (2, 1, "prefork"), (1, 2, "prefork"), (1, 8, "threads"), (1, 4, "prefork")]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pool", choices=["prefork", "threads"], default="prefork")
    parser.add_argument("--submitters", type=int, default=8)
    parser.add_argument("--durable", action="store_true")
    parser.add_argument("--best", action="store_true", help="try several configurations, report each and the best")
    args = parser.parse_args()
    if not args.best:
        run(args)
        return
    rates = []
    for workers, concurrency, pool in CONFIGURATIONS:
        args.workers, args.concurrency, args.pool = workers, concurrency, pool
        rates.append((run(args), f"{workers} x {concurrency} {pool}"))
    rate, name = max(rates)
    print(f"celery best: {rate:.0f} tasks/s ({name}); all: " + ", ".join(f"{n}: {r:.0f}" for r, n in rates))


def run(args):
    """One configuration; returns tasks/s."""
    work = tempfile.mkdtemp(prefix="celery-bench-")
    procs = []
    try:
        port = free_port()
        redis_args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", work, "--save", ""]
        redis_args += ["--appendonly", "yes", "--appendfsync", "always"] if args.durable else ["--appendonly", "no"]
        redis = subprocess.Popen(redis_args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(redis)
        url = f"redis://127.0.0.1:{port}/0"
        os.environ["BENCH_REDIS"] = url
        with open(os.path.join(work, "noopapp.py"), "w") as f:
            f.write(APP)
        sys.path.insert(0, work)
        import redis as redis_client

        client = redis_client.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis_client.ConnectionError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start")
                time.sleep(0.05)

        celery_bin = os.path.join(os.path.dirname(sys.executable), "celery")
        env = dict(os.environ, PYTHONPATH=work)
        for i in range(args.workers):
            procs.append(
                subprocess.Popen(
                    [celery_bin, "-A", "noopapp", "worker", "--pool", args.pool, "--concurrency",
                     str(args.concurrency), "-n", f"w{i}@bench", "--loglevel", "WARNING",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"],
                    cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"w{i}.log"), "w"),
                )
            )
        from celery import Celery

        # The submitting side needs no result backend of its own (the workers store results in Redis; this
        # script reads them there), which also keeps Celery's per-task result subscription out of the way.
        app = Celery("client", broker=url)

        deadline = time.monotonic() + 120
        while len(app.control.ping(timeout=0.5) or []) < args.workers:
            if time.monotonic() > deadline:
                raise SystemExit("the Celery workers did not all come up")
        pids = [p.pid for p in procs]
        for worker in procs[1:]:
            pids += children(worker.pid)

        results = [None] * args.tasks
        next_index = [0]
        lock = threading.Lock()

        def submit():
            while True:
                with lock:
                    i = next_index[0]
                    next_index[0] += 1
                if i >= args.tasks:
                    return
                results[i] = app.send_task("noopapp.noop")

        cpu_before = cpu_seconds(pids)
        started = time.monotonic()
        threads = [threading.Thread(target=submit) for _ in range(args.submitters)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        submitted = time.monotonic() - started
        # Wait until every result is stored (read straight from Redis: one MGET per 1,000 outstanding ids).
        pending = [f"celery-task-meta-{r.id}" for r in results]
        deadline = time.monotonic() + 600
        while pending:
            still = []
            for i in range(0, len(pending), 1000):
                chunk = pending[i : i + 1000]
                still += [key for key, value in zip(chunk, client.mget(chunk)) if value is None]
            pending = still
            if pending:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{len(pending)} results missing after 10 minutes")
                time.sleep(0.005)
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(pids) - cpu_before
        print(
            f"celery: {args.tasks} no-op tasks, {args.workers} workers x {args.concurrency} {args.pool} children, "
            f"{args.submitters} submitters, redis {'appendfsync always' if args.durable else 'in memory'}: "
            f"{elapsed:.2f} s -> {args.tasks / elapsed:.0f} tasks/s (all submitted after {submitted:.2f} s); "
            f"CPU of redis + workers {cpu:.2f} s ({cpu / elapsed * 100:.0f}% of one core)",
            flush=True,
        )
        return args.tasks / elapsed
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
