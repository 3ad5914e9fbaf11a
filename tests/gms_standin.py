#!/usr/bin/env python3
"""A stand-in for DataHub's metadata service (GMS) for Outpost's tests.

Serves the calls an executor makes (datahub-protocol.md §2):
  POST /aspects?action=ingestProposal                     -- every body is validated with DataHub's own schema
                                                             classes (acryl-datahub): from_obj + validate() +
                                                             round-trip; GMS's result state machine is enforced
                                                             (a change away from SUCCESS/CANCELLED/ABORTED/DUPLICATE
                                                             is 422, the same status again is accepted and ignored)
  POST /openapi/v2/entity/batch/dataHubExecutionRequest   -- serves signals and inputs set by the test
  POST /api/graphql                                       -- listExecutorConfigs (DataHub Cloud only): the pools'
                                                             queues and temporary credentials set by the test; an
                                                             open-source GMS (none set) answers with its GraphQL error
  GET  /config                                            -- what the test set (POST /__control/config); 404 until
                                                             then (a GMS we cannot read: no conditional writes)
  GET  /openapi/v3/entity/dataHubExecutionRequest/{urn}[/dataHubExecutionRequestResult]?systemMetadata=true
                                                          -- the request's input and result with systemMetadata
                                                             (version, properties); 404 when absent
  POST /aspects?action=ingestProposalBatch                -- several proposals at once, each validated as above;
                                                             all kept, or none when one is refused
  POST /openapi/v3/entity/dataHubExecutionRequest/batchGet?systemMetadata=true
                                                          -- many requests' aspects at once, entities without any
                                                             of the asked aspects left out
  POST /api/graphql listExecutionRequests                 -- a search over the requests created by the test, with
                                                             the index lagging writes by --index-lag-ms; filters
                                                             executorId, executionResultStatus (values, or EXISTS
                                                             negated), sort requestTimeMs
Result writes carry versions as GMS keeps them (datahub-protocol.md §2.6): a missing aspect is "-1", the first
write makes "1", each accepted change adds one (an identical re-write changes nothing), and a proposal whose
headers carry If-Version-Match that differs is refused with 422 "Expected version X, actual version Y" inside
DataHub's envelope. Both honour an optional path prefix (DataHub Cloud's /gms).

Control API for tests (never authenticated):
  GET  /__control/requests          every recorded request: method, path, headers, body, valid, error, status
  POST /__control/fail              {"status": 503, "count": 3, "path": "aspects"}: the next N matching calls fail
                                    with that status (0 = drop the connection); {"delay_ms": N} delays instead;
                                    "match": only calls whose body contains this text (e.g. a URN)
  POST /__control/clear             ends every injected failure
  POST /__control/signal            {"urn": "...", "signal": "KILL"}
  POST /__control/input             {"urn": "...", "input": {ExecutionRequestInput}}
  POST /__control/token             {"token": "..."}: the Bearer token GMS accepts (none = any)
  GET  /__control/results           latest dataHubExecutionRequestResult per URN
  POST /__control/execution_request {"urn": ..., "input": {ExecutionRequestInput}}: creates a request (searchable
                                    after the index lag)
  POST /__control/config            {...}: what GET /config answers
  POST /__control/executor_configs  {"configs": [ExecutorConfigs...], "expires_in_ms": N}: what listExecutorConfigs
                                    answers; each answer's credentials expire N ms after it
Usage: gms_standin.py --port 0 --port-file FILE [--max-payload BYTES] [--index-lag-ms N]
"""

import argparse
import json
import sys
import threading
import time
from urllib.parse import unquote
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from datahub.metadata.schema_classes import ASPECT_NAME_MAP, MetadataChangeProposalClass

IMMUTABLE = {"SUCCESS", "CANCELLED", "ABORTED", "DUPLICATE"}
LOCK = threading.Lock()
STATE = {
    "requests": [],
    "faults": [],  # list of {"status", "count", "path", "delay_ms"}
    "signals": {},
    "inputs": {},
    "results": {},
    "meta": {},  # urn -> {"version": int, "properties": {...}} of the result aspect
    "index": {},  # urn -> {"executorId", "requestTimeMs", "events": [(apply_at, status or None)]}
    "config": None,
    "token": None,
    "executor_configs": None,  # {"configs": [...], "expires_in_ms": N}; None = an open-source GMS
}

# dataHubRemoteExecutorStatus as DataHub Cloud's RemoteExecutorStatus.avsc has it (datahub-gms-shapes.md §6); the
# open-source wheel has no class for it, so its fields and types are checked here: name -> (types, required).
REMOTE_EXECUTOR_STATUS = {
    "executorPoolId": (str, True), "executorReleaseVersion": (str, True), "executorAddress": (str, True),
    "executorHostname": (str, True), "executorUptime": ((int, float), True), "reportedAt": (int, True),
    "executorExpired": (bool, False), "executorStopped": (bool, False), "executorEmbedded": (bool, False),
    "executorInternal": (bool, False), "logDeliveryEnabled": (bool, False), "channel": (str, False),
}


def validate_executor_status(body):
    p = body["proposal"]
    if set(body) - {"proposal", "async"} or body.get("async") != "false":
        raise ValueError("executor status: unexpected top-level keys or not async false")
    if not MetadataChangeProposalClass.from_obj(p).validate():
        raise ValueError("proposal failed avro validation")
    if p.get("changeType") != "UPSERT" or p.get("aspectName") != "dataHubRemoteExecutorStatus":
        raise ValueError("executor status: must be an UPSERT of dataHubRemoteExecutorStatus")
    key = json.loads(p["entityKeyAspect"]["value"])
    if set(key) != {"id"} or not isinstance(key["id"], str) or len("urn:li:dataHubRemoteExecutor:" + key["id"]) > 500:
        raise ValueError(f"executor status: bad key {key}")
    status = json.loads(p["aspect"]["value"])
    for name, value in status.items():
        if name not in REMOTE_EXECUTOR_STATUS:
            raise ValueError(f"executor status: unknown field {name}")
        kinds, _ = REMOTE_EXECUTOR_STATUS[name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool):
            raise ValueError(f"executor status: {name} has the wrong type")
    missing = [n for n, (_, required) in REMOTE_EXECUTOR_STATUS.items() if required and n not in status]
    if missing:
        raise ValueError(f"executor status: missing {missing}")
    if status.get("channel") not in (None, "SQS", "KAFKA"):
        raise ValueError("executor status: channel must be SQS or KAFKA")
    return key["id"], status


LIST_EXECUTOR_CONFIGS_FIELDS = ["region", "executorId", "queueUrl", "accessKeyId", "secretKeyId", "sessionToken",
                                "expiration"]


def strip_nulls(d):
    return {k: strip_nulls(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def validate_aspect(aspect_name, d):
    cls = ASPECT_NAME_MAP[aspect_name]
    obj = cls.from_obj(d)
    if not obj.validate():
        raise ValueError("avro validation failed")
    if obj.to_obj() != strip_nulls(d):
        raise ValueError(f"unknown or dropped fields: sent {sorted(d)}, schema kept {sorted(obj.to_obj())}")
    return obj


def validate_proposal_body(body):
    if set(body) - {"proposal", "async"}:
        raise ValueError(f"unexpected top-level keys {sorted(set(body) - {'proposal', 'async'})}")
    if body.get("async") not in ("true", "false"):
        raise ValueError(f"async must be the string 'true' or 'false', got {body.get('async')!r}")
    p = body["proposal"]
    if not MetadataChangeProposalClass.from_obj(p).validate():
        raise ValueError("proposal failed avro validation")
    if MetadataChangeProposalClass.from_obj(p).to_obj() != strip_nulls(p):
        raise ValueError("proposal has unknown or dropped fields")
    if p["entityType"] != "dataHubExecutionRequest":
        raise ValueError(f"entityType {p['entityType']!r}")
    if p["changeType"] != "UPSERT":
        raise ValueError(f"changeType {p['changeType']!r}")
    if p["aspect"]["contentType"] != "application/json":
        raise ValueError("aspect.contentType must be application/json")
    if not p.get("entityUrn", "").startswith("urn:li:dataHubExecutionRequest:"):
        raise ValueError("entityUrn must be an execution request URN")
    aspect = json.loads(p["aspect"]["value"])
    validate_aspect(p["aspectName"], aspect)
    return p["entityUrn"], p["aspectName"], aspect


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, obj=None):
        data = b"" if obj is None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self):
        with LOCK:
            if self.path == "/__control/requests":
                return self.reply(200, STATE["requests"])
            if self.path == "/__control/results":
                return self.reply(200, STATE["results"])
        record = {"method": "GET", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                  "body": "", "valid": True, "error": None, "status": None, "time_ms": int(time.time() * 1000)}
        status, reply = self.handle_get(self.path)
        if not self.recorded(record, status):
            return
        if reply is None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.send_header("Not-Found-Reason", "ENTITY")
            self.end_headers()
            return
        self.reply(status, reply)

    def handle_get(self, path):
        fault = self.fault_for(path, b"")
        if fault and fault.get("delay_ms"):
            time.sleep(fault["delay_ms"] / 1000)
        elif fault:
            return fault["status"], {"error": "injected failure"}
        token = STATE["token"]
        if token is not None and self.headers.get("Authorization", "") != f"Bearer {token}":
            return 401, {"error": "Unauthorized"}
        route = path.split("?", 1)[0]
        query = path.split("?", 1)[1] if "?" in path else ""
        if route.endswith("/config"):
            with LOCK:
                config = STATE["config"]
            return (200, config) if config is not None else (404, {"message": "not found"})
        prefix = "/openapi/v3/entity/dataHubExecutionRequest/"
        if prefix in route:
            rest = unquote(route.split(prefix, 1)[1])
            with_meta = "systemMetadata=true" in query
            urn, _, aspect = rest.partition("/")
            with LOCK:
                entity = self.entity_v3(urn, with_meta)
            if aspect:
                if aspect not in ("dataHubExecutionRequestResult", "dataHubExecutionRequestInput"):
                    return 400, {"error": f"unknown aspect {aspect}"}
                return (200, entity[aspect]) if entity and aspect in entity else (404, None)
            return (200, entity) if entity else (404, None)
        return 404, {"message": "not found"}

    @staticmethod
    def entity_v3(urn, with_meta):
        entity = {"urn": urn}
        if urn in STATE["inputs"]:
            entity["dataHubExecutionRequestInput"] = {"value": STATE["inputs"][urn]}
            if with_meta:
                entity["dataHubExecutionRequestInput"]["systemMetadata"] = {
                    "lastObserved": 0, "runId": "no-run-id-provided", "lastRunId": "no-run-id-provided", "version": "1"}
        if urn in STATE["results"]:
            entity["dataHubExecutionRequestResult"] = {"value": STATE["results"][urn]}
            if with_meta:
                meta = STATE["meta"][urn]
                entity["dataHubExecutionRequestResult"]["systemMetadata"] = {
                    "lastObserved": meta["lastObserved"], "runId": "no-run-id-provided",
                    "lastRunId": "no-run-id-provided", "version": str(meta["version"]),
                    "properties": meta["properties"]}
        return entity if len(entity) > 1 else None

    def fault_for(self, path, raw):
        body = raw.decode("utf-8", "replace")
        with LOCK:
            for fault in STATE["faults"]:
                if fault["count"] > 0 and fault.get("path", "") in path and fault.get("match", "") in body:
                    fault["count"] -= 1
                    return dict(fault)
        return None

    def do_POST(self):
        raw = self.read_body()
        path = self.path
        if path.startswith("/__control/"):
            return self.control(path, json.loads(raw or b"{}"))
        record = {
            "method": "POST",
            "path": path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": raw.decode("utf-8", "replace"),
            "valid": None,
            "error": None,
            "status": None,
            "time_ms": int(time.time() * 1000),
        }
        status, reply = self.handle_api(path, raw, record)
        if self.recorded(record, status):
            self.reply(status, reply)

    def recorded(self, record, status):
        """Records an answered call; False when the answer is a dropped connection (status 0)."""
        record["status"] = status
        record["done_ms"] = int(time.time() * 1000)
        with LOCK:
            STATE["requests"].append(record)
        if status == 0:
            self.close_connection = True
            self.connection.close()
            return False
        return True

    def handle_api(self, path, raw, record):
        fault = self.fault_for(path, raw)
        if fault and fault.get("delay_ms"):
            time.sleep(fault["delay_ms"] / 1000)
        elif fault:
            return fault["status"], {"status": fault["status"], "message": "injected failure"}
        token = STATE["token"]
        auth = self.headers.get("Authorization", "")
        if token is not None and auth != f"Bearer {token}":
            return 401, {"status": 401, "message": "Unauthorized"}
        if path.endswith("/aspects?action=ingestProposal"):
            return self.ingest_proposal(raw, record)
        if path.endswith("/aspects?action=ingestProposalBatch"):
            return self.ingest_proposal_batch(raw, record)
        if path.endswith("/openapi/v2/entity/batch/dataHubExecutionRequest"):
            return self.batch_get(raw, record)
        if path.split("?", 1)[0].endswith("/openapi/v3/entity/dataHubExecutionRequest/batchGet"):
            return self.batch_get_v3(raw, record, path.split("?", 1)[1] if "?" in path else "")
        if path.endswith("/api/graphql"):
            return self.graphql(raw, record)
        record["valid"] = False
        record["error"] = f"unknown endpoint {path}"
        return 404, {"message": "not found"}

    def envelope_refusal(self, raw, record):
        """What Rest.li answers a write without its protocol header or over the payload cap; None when fine."""
        if self.headers.get("X-RestLi-Protocol-Version") != "2.0.0":
            record["valid"] = False
            record["error"] = "missing X-RestLi-Protocol-Version: 2.0.0"
            return 400, {"status": 400, "message": record["error"]}
        if ARGS.max_payload and len(raw) > ARGS.max_payload:
            record["valid"] = False
            record["error"] = f"payload of {len(raw)} bytes is over {ARGS.max_payload}"
            return 413, {"status": 413, "message": "Payload Too Large"}
        return None

    def ingest_proposal(self, raw, record):
        refused = self.envelope_refusal(raw, record)
        if refused:
            return refused
        parsed = json.loads(raw)
        if parsed.get("proposal", {}).get("entityType") == "dataHubRemoteExecutor":
            with LOCK:
                cloud = STATE["executor_configs"] is not None
            if not cloud:
                record["valid"] = False
                record["error"] = "an open-source GMS has no dataHubRemoteExecutor entity"
                return 422, {"status": 422, "message": "Unknown entity type dataHubRemoteExecutor"}
            try:
                validate_executor_status(parsed)
            except Exception as e:  # noqa: BLE001 - any failure is an invalid payload
                record["valid"] = False
                record["error"] = f"{type(e).__name__}: {e}"
                return 422, {"status": 422, "message": record["error"]}
            record["valid"] = True
            return 200, {"value": "success"}
        try:
            urn, aspect_name, aspect = validate_proposal_body(parsed)
        except Exception as e:  # noqa: BLE001 - any failure is an invalid payload
            record["valid"] = False
            record["error"] = f"{type(e).__name__}: {e}"
            return 422, {"status": 422, "message": record["error"]}
        record["valid"] = True
        if aspect_name == "dataHubExecutionRequestResult":
            with LOCK:
                refused = self.refusal(urn, parsed["proposal"], aspect)
                if refused:
                    return refused
                self.apply_result(urn, parsed["proposal"], aspect)
        return 200, {"value": "success"}

    @staticmethod
    def refusal(urn, proposal, aspect):
        """Why GMS refuses this result write now (status, body), or None. Called under LOCK."""
        expected = (proposal.get("headers") or {}).get("If-Version-Match")
        current = STATE["results"].get(urn)
        meta = STATE["meta"].get(urn)
        actual = str(meta["version"]) if meta else "-1"
        if expected is not None and expected != actual:
            message = (f"Failed to validate MCP due to: ValidationExceptionCollection{{EntityAspect:({urn},"
                       f"dataHubExecutionRequestResult) Exceptions: [AspectValidationException("
                       f"subType=PRECONDITION, msg=Expected version {expected}, actual version {actual})]}}")
            return 422, {"exceptionClass": "com.linkedin.restli.server.RestLiServiceException",
                         "stackTrace": f"com.linkedin.restli.server.RestLiServiceException [HTTP Status:422]: "
                                       f"{message}", "message": message, "status": 422}
        if current and current["status"] in IMMUTABLE and aspect["status"] != "ROLLING_BACK" \
                and aspect["status"] != current["status"]:
            return 422, {"status": 422, "message": "Invalid update to immutable state. Denied update."}
        return None

    @staticmethod
    def apply_result(urn, proposal, aspect):
        """Keeps an accepted result write (an identical terminal re-write is ignored, as GMS does). Under LOCK."""
        properties = (proposal.get("systemMetadata") or {}).get("properties") or {}
        current = STATE["results"].get(urn)
        meta = STATE["meta"].get(urn)
        if current and current["status"] in IMMUTABLE and aspect["status"] != "ROLLING_BACK":
            return
        if current != aspect or (meta and meta["properties"] != properties):
            STATE["results"][urn] = aspect
            STATE["meta"][urn] = {"version": (meta["version"] + 1) if meta else 1, "properties": properties,
                                  "lastObserved": int(time.time() * 1000)}
            if urn in STATE["index"]:
                STATE["index"][urn]["events"].append((time.time() + ARGS.index_lag_ms / 1000, aspect["status"]))

    def ingest_proposal_batch(self, raw, record):
        """Rest.li ingestProposalBatch ({"proposals": [...], "async"}), as DataHub's emitter sends it: each
        proposal checked with DataHub's classes like a single one; all applied, or none when one is refused."""
        refused = self.envelope_refusal(raw, record)
        if refused:
            return refused
        parsed = json.loads(raw)
        checked = []
        try:
            if set(parsed) - {"proposals", "async"} or not isinstance(parsed.get("proposals"), list) \
                    or not parsed["proposals"]:
                raise ValueError("the body must be {proposals: [a proposal, ...], async}")
            for proposal in parsed["proposals"]:
                checked.append(validate_proposal_body({"proposal": proposal, "async": parsed.get("async")}))
        except Exception as e:  # noqa: BLE001 - any failure is an invalid payload
            record["valid"] = False
            record["error"] = f"{type(e).__name__}: {e}"
            return 422, {"status": 422, "message": record["error"]}
        record["valid"] = True
        with LOCK:
            for (urn, aspect_name, aspect), proposal in zip(checked, parsed["proposals"]):
                refused = aspect_name == "dataHubExecutionRequestResult" and self.refusal(urn, proposal, aspect)
                if refused:
                    return refused
            for (urn, aspect_name, aspect), proposal in zip(checked, parsed["proposals"]):
                if aspect_name == "dataHubExecutionRequestResult":
                    self.apply_result(urn, proposal, aspect)
        return 200, {"value": [urn for urn, _, _ in checked]}

    def graphql(self, raw, record):
        body = json.loads(raw)
        query = body.get("query", "")
        if "listExecutionRequests" in query:
            return self.list_execution_requests(body, record)
        record["valid"] = set(body) <= {"query", "variables", "operationName"} and "listExecutorConfigs" in query and all(
            field in query for field in LIST_EXECUTOR_CONFIGS_FIELDS)
        with LOCK:
            served = STATE["executor_configs"]
            if served is None or "listExecutorConfigs" not in query:
                return 200, {"errors": [{"message": "Validation error (FieldUndefined@[listExecutorConfigs]) : Field "
                                                    "'listExecutorConfigs' in type 'Query' is undefined"}], "data": None}
            expires = time.time() + served.get("expires_in_ms", 3_600_000) / 1000
            expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
            configs = [dict(c, expiration=expiration) for c in served["configs"]]
        return 200, {"data": {"listExecutorConfigs": {"total": len(configs), "executorConfigs": configs}}}

    def list_execution_requests(self, body, record):
        """The search over execution requests (datahub-gms-shapes.md §1), served from a lagging index."""
        inp = (body.get("variables") or {}).get("input") or {}
        problems = []
        if set(body) - {"query", "variables", "operationName"}:
            problems.append("unexpected top-level keys")
        if "ListExecutionRequestsInput!" not in body.get("query", ""):
            problems.append("the input is not declared as ListExecutionRequestsInput!")
        if set(inp) - {"start", "count", "query", "filters", "sort", "systemSources"}:
            problems.append(f"unknown input fields {sorted(set(inp) - {'start', 'count', 'query', 'filters', 'sort', 'systemSources'})}")
        for f in inp.get("filters") or []:
            if set(f) - {"field", "value", "values", "negated", "condition"} or "field" not in f:
                problems.append(f"bad FacetFilterInput {f}")
            if f.get("condition", "EQUAL") not in ("EQUAL", "EXISTS", "IN"):
                problems.append(f"condition {f.get('condition')} not served here")
        sort = inp.get("sort")
        if sort and (set(sort) != {"field", "sortOrder"} or sort["sortOrder"] not in ("ASCENDING", "DESCENDING")):
            problems.append(f"bad SortCriterion {sort}")
        if problems:
            record["valid"] = False
            record["error"] = "; ".join(problems)
            return 200, {"errors": [{"message": record["error"]}], "data": None}
        record["valid"] = True
        now = time.time()
        hits = []
        with LOCK:
            for urn, entry in STATE["index"].items():
                applied = [status for at, status in entry["events"] if at <= now]
                if not applied:
                    continue  # not indexed yet
                status = applied[-1]
                fields = {"executorId": entry["executorId"], "executionResultStatus": status}
                keep = True
                for f in inp.get("filters") or []:
                    value = fields.get(f["field"])
                    if f.get("condition") == "EXISTS":
                        match = value is not None
                    else:
                        match = value in (f.get("values") or [f.get("value")])
                    keep = keep and (match != bool(f.get("negated")))
                if keep:
                    hits.append((entry["requestTimeMs"], urn))
            hits.sort(reverse=bool(sort) and sort["sortOrder"] == "DESCENDING")
            start, count = inp.get("start", 0), inp.get("count", 20)
            page = hits[start:start + count]
            requests = []
            for _, urn in page:
                result = STATE["results"].get(urn)
                requests.append({"urn": urn, "id": urn.rsplit(":", 1)[1],
                                 "result": {"status": result["status"]} if result else None})
        return 200, {"data": {"listExecutionRequests": {"start": start, "count": len(requests), "total": len(hits),
                                                        "executionRequests": requests}}}

    def batch_get_v3(self, raw, record, query):
        """OpenAPI v3 batchGet (datahub-gms-shapes.md §2): a list of {"urn", <aspect>: {}} in, the entities that have
        any of the asked aspects out (others are omitted), shaped as the single GET."""
        body = json.loads(raw)
        aspects = {"dataHubExecutionRequestInput", "dataHubExecutionRequestResult"}
        valid = isinstance(body, list) and all(
            isinstance(item, dict) and isinstance(item.get("urn"), str)
            and all(k == "urn" or (k in aspects and isinstance(v, dict)) for k, v in item.items())
            for item in body)
        record["valid"] = valid
        if not valid:
            record["error"] = "batchGet takes a list of {urn, <aspect name>: {}} objects"
            return 400, {"error": record["error"]}
        with_meta = "systemMetadata=true" in query
        entities = []
        with LOCK:
            for item in body:
                entity = self.entity_v3(item["urn"], with_meta)
                if not entity:
                    continue
                asked = [k for k in item if k != "urn"] or list(aspects)
                picked = {k: v for k, v in entity.items() if k in asked}
                if picked:
                    entities.append(dict(picked, urn=item["urn"]))
        return 200, entities

    def batch_get(self, raw, record):
        body = json.loads(raw)
        record["valid"] = set(body) <= {"urns", "aspectNames", "withSystemMetadata"} and isinstance(body.get("urns"), list)
        entities = []
        with LOCK:
            for urn in body.get("urns", []):
                aspects = {}
                names = body.get("aspectNames") or ["dataHubExecutionRequestSignal", "dataHubExecutionRequestInput"]
                if "dataHubExecutionRequestSignal" in names and urn in STATE["signals"]:
                    aspects["dataHubExecutionRequestSignal"] = {"value": STATE["signals"][urn]}
                if "dataHubExecutionRequestInput" in names and urn in STATE["inputs"]:
                    aspects["dataHubExecutionRequestInput"] = {"value": STATE["inputs"][urn]}
                entities.append({"urn": urn, "aspects": aspects})
        return 200, {"entities": entities}

    def control(self, path, body):
        with LOCK:
            if path == "/__control/fail":
                STATE["faults"].append({"status": body.get("status", 503), "count": body.get("count", 1),
                                        "path": body.get("path", ""), "delay_ms": body.get("delay_ms", 0),
                                        "match": body.get("match", "")})
            elif path == "/__control/clear":
                # Every fault ends; `then` (a list of faults as /fail takes them) starts at the same instant.
                STATE["faults"] = [{"status": f.get("status", 503), "count": f.get("count", 1),
                                    "path": f.get("path", ""), "delay_ms": 0, "match": f.get("match", "")}
                                   for f in body.get("then", [])]
            elif path == "/__control/signal":
                STATE["signals"][body["urn"]] = {
                    "signal": body.get("signal", "KILL"),
                    "createdAt": {"time": int(time.time() * 1000), "actor": "urn:li:corpuser:admin"},
                }
            elif path == "/__control/input":
                validate_aspect("dataHubExecutionRequestInput", body["input"])
                STATE["inputs"][body["urn"]] = body["input"]
            elif path == "/__control/execution_request":
                validate_aspect("dataHubExecutionRequestInput", body["input"])
                urn = body["urn"]
                STATE["inputs"][urn] = body["input"]
                STATE["index"][urn] = {"executorId": body["input"]["executorId"],
                                       "requestTimeMs": body["input"]["requestedAt"],
                                       "events": [(time.time() + ARGS.index_lag_ms / 1000, None)]}
            elif path == "/__control/config":
                STATE["config"] = body
            elif path == "/__control/executor_configs":
                STATE["executor_configs"] = body
            elif path == "/__control/token":
                STATE["token"] = body.get("token")
            else:
                return self.reply(404, {"message": "unknown control"})
        self.reply(200, {})


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--max-payload", type=int, default=0, help="413 for proposals larger than this (0 = none)")
    parser.add_argument("--index-lag-ms", type=int, default=300, help="how long a write takes to reach the search index")
    ARGS = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    server.daemon_threads = True
    with open(ARGS.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    import os
    os.rename(ARGS.port_file + ".tmp", ARGS.port_file)
    print(f"gms stand-in on 127.0.0.1:{server.server_address[1]}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
