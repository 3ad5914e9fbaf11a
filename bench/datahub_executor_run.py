#!/usr/bin/env python3
"""Runs a file -> blackhole recipe through DataHub's own executor engine (`datahub.executor` in acryl-datahub, as in
datahub-protocol.md §6.4, `version: native`) N times and prints the wall time from dispatch to the terminal result
(the SUCCESS MCP the engine emits), one line per run and the median, as JSON on the last line. A third argument pins
a DataHub version: the engine then builds that version's venv in each run's temporary directory, as it does."""
import json
import statistics
import sys
import threading
import time

from datahub.executor.dispatcher.default_dispatcher import DefaultDispatcher
from datahub.executor.execution.reporting_executor import ReportingExecutor, ReportingExecutorConfig
from datahub.executor.execution.task import TaskConfig
from datahub.executor.request.execution_request import ExecutionRequest
from datahub.ingestion.graph.client import DataHubGraph
from datahub.secret.secret_store import SecretStoreConfig

DONE = {}
LOCK = threading.Condition()


class CaptureGraph(DataHubGraph):
    def __init__(self):
        pass

    def test_connection(self):
        pass

    def emit_mcp(self, mcp, *, async_flag=None, emit_mode=None, wait_timeout=None):
        obj = mcp.to_obj()
        status = json.loads(obj["aspect"]["value"])["status"]
        if status != "RUNNING":
            with LOCK:
                DONE[obj.get("entityUrn") or obj["entityKeyAspect"]["value"]] = (time.monotonic(), status)
                LOCK.notify_all()


def main():
    path = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    version = sys.argv[3] if len(sys.argv) > 3 else "native"
    executor = ReportingExecutor(ReportingExecutorConfig(
        id="remote", graph_client=CaptureGraph(),
        task_configs=[TaskConfig(name="RUN_INGEST",
                                 type="datahub.executor.execution.sub_process_ingestion_task.SubProcessIngestionTask",
                                 configs={})],
        secret_stores=[SecretStoreConfig(type="env", config={})]))
    dispatcher = DefaultDispatcher([executor])
    recipe = {"source": {"type": "file", "config": {"path": path}}, "sink": {"type": "blackhole"}}
    times = []
    for i in range(runs):
        exec_id = f"bench-{i}-{time.time_ns()}"
        started = time.monotonic()
        dispatcher.dispatch(ExecutionRequest(executor_id="remote", exec_id=exec_id, name="RUN_INGEST",
                                             args={"recipe": json.dumps(recipe), "version": version,
                                                   "debug_mode": "false"}))
        with LOCK:
            while not any(exec_id in key for key in DONE):
                LOCK.wait()
            key = next(k for k in DONE if exec_id in k)
            ended, status = DONE[key]
        if status != "SUCCESS":
            raise SystemExit(f"run {i} ended {status}")
        times.append(ended - started)
        print(f"run {i}: {status} in {ended - started:.3f} s", file=sys.stderr)
    print(json.dumps({"runs": runs, "median_s": statistics.median(times), "times_s": times}))


if __name__ == "__main__":
    main()
