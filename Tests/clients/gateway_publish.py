"""A gateway publishing scan.create.v1 straight to the broker, per the documented contract
(topology/schemas/scan.create.v1.json; properties: content_type, type, message_id, correlation_id,
timestamp, persistent; header x-organization-id), with publisher confirms.

usage: gateway_publish.py AMQP_URL EXCHANGE ORGANIZATION_ID SCAN_ID PROJECT_KEY
"""
import datetime
import json
import sys
import time
import uuid

import jsonschema
import pika

url, exchange, organization, scan, project_key = sys.argv[1:6]
body = {
    "scan_id": scan,
    "organization_id": organization,
    "project": {"external_key": project_key},
    "scan_types": ["sast", "secrets"],
    "artifact": {"url": "https://storage.example/gateway/archive.tar.gz"},
    "requested_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    "labels": {"gateway": "python"},
}
schema = json.load(open(sys.argv[6])) if len(sys.argv) > 6 else None
if schema:
    jsonschema.validate(body, schema)
    print("ok   the message validates against scan.create.v1.json", flush=True)

connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.confirm_delivery()
channel.basic_publish(
    exchange=exchange, routing_key="scan.create", body=json.dumps(body).encode(), mandatory=True,
    properties=pika.BasicProperties(
        content_type="application/json", type="scan.create.v1", message_id=str(uuid.uuid4()),
        correlation_id=scan, timestamp=int(time.time()), delivery_mode=2,
        headers={"x-organization-id": organization}))
print("ok   published and confirmed", flush=True)
connection.close()
