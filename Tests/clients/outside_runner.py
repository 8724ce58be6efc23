"""A runner written outside cloudscan, following only the documented contract
(topology/schemas/findings.batch.v1.json and status.report.v1.json): reports started, publishes
its findings in two chunks, a heartbeat, then completed — every message persistent, mandatory,
with publisher confirms, header x-organization-id, and the attempt's runner token (from the
runner's environment, CLOUDSCAN_RUNNER_TOKEN).

usage: outside_runner.py AMQP_URL SCAN_ID ORGANIZATION_ID ATTEMPT SCHEMA_DIR   (token in CLOUDSCAN_RUNNER_TOKEN)
"""
import datetime
import hashlib
import json
import os
import sys

import jsonschema
import pika

url, scan, organization, attempt, schema_dir = sys.argv[1:6]
attempt = int(attempt)
token = os.environ["CLOUDSCAN_RUNNER_TOKEN"]
schemas = {name: json.load(open(f"{schema_dir}/{name}.json")) for name in ("findings.batch.v1", "status.report.v1")}

connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.confirm_delivery()


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def publish(exchange, routing_key, message_type, message_id, body):
    jsonschema.validate(body, schemas[message_type])
    channel.basic_publish(
        exchange, routing_key, json.dumps(body).encode(),
        pika.BasicProperties(
            content_type="application/json", type=message_type, message_id=message_id, correlation_id=scan,
            delivery_mode=2, headers={"x-organization-id": organization}),
        mandatory=True)  # raises if unroutable or nacked


def finding(n, severity):
    snippet = f"password = 'hunter{n}'"
    return {
        "scanner": "outside-scanner", "rule_id": f"OUT{n % 2}", "severity": severity,
        "title": "Hard-coded password", "message": f"line {n} holds a password", "path": f"app/settings{n}.py",
        "line": n, "column": 1, "cwe": ["CWE-798"],
        "fingerprint": hashlib.sha256(f"outside-scanner:OUT{n % 2}:{snippet}".encode()).hexdigest(),
        "raw": {"ruleId": f"OUT{n % 2}", "level": "error"},
    }


def report(kind, **extra):
    body = {"scan_id": scan, "organization_id": organization, "attempt": attempt, "kind": kind, "at": now(),
            "runner_token": token, **extra}
    publish("cloudscan.status", f"status.{kind}", "status.report.v1", f"{scan}:{attempt}:{kind}", body)


report("started")
chunks = [[finding(1, "critical"), finding(2, "high"), finding(3, "medium")], [finding(4, "low"), finding(5, "info")]]
for index, chunk in enumerate(chunks):
    publish("cloudscan.findings", "findings.sast", "findings.batch.v1", f"{scan}:{attempt}:{index}", {
        "scan_id": scan, "organization_id": organization, "attempt": attempt, "batch_index": index,
        "runner_token": token, "findings": chunk})
report("heartbeat")
report("completed", findings_batches=len(chunks),
       counts={"critical": 1, "high": 1, "medium": 1, "low": 1, "info": 1},
       scanners=[{"name": "outside-scanner", "outcome": "ok", "duration_ms": 12, "findings": 5}], partial=False)
connection.close()
print("published", flush=True)
