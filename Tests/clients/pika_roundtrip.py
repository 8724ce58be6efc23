"""An outside AMQP client for the tests: publishes to the Swift consumer, consumes from the Swift publisher.

usage: pika_roundtrip.py HOST PORT VHOST USER PASSWORD PUBLISH_EXCHANGE ROUTING_KEY PUBLISH_COUNT CONSUME_QUEUE CONSUME_COUNT
Prints one JSON object: {"published": [...ids], "consumed": [{message_id, type, content_type, headers, body}]}.
"""
import json
import sys
import time

import pika

host, port, vhost, user, password, exchange, routing_key, publish_count, queue, consume_count = sys.argv[1:11]
params = pika.ConnectionParameters(
    host=host, port=int(port), virtual_host=vhost, credentials=pika.PlainCredentials(user, password), heartbeat=30
)
connection = pika.BlockingConnection(params)
channel = connection.channel()
channel.confirm_delivery()
published = []
for i in range(int(publish_count)):
    message_id = f"pika-{i}"
    channel.basic_publish(
        exchange=exchange,
        routing_key=routing_key,
        body=json.dumps({"from": "pika", "n": i}).encode(),
        properties=pika.BasicProperties(
            content_type="application/json",
            type="test.pika.v1",
            message_id=message_id,
            correlation_id=f"scan-{i}",
            delivery_mode=2,
            headers={"x-organization-id": "org-pika", "traceparent": "00-" + "c" * 32 + "-" + "d" * 16 + "-01"},
        ),
        mandatory=True,
    )
    published.append(message_id)

consumed = []
deadline = time.time() + 20
while len(consumed) < int(consume_count) and time.time() < deadline:
    method, properties, body = channel.basic_get(queue=queue, auto_ack=False)
    if method is None:
        time.sleep(0.05)
        continue
    consumed.append(
        {
            "message_id": properties.message_id,
            "type": properties.type,
            "content_type": properties.content_type,
            "correlation_id": properties.correlation_id,
            "persistent": properties.delivery_mode == 2,
            "headers": {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in (properties.headers or {}).items()},
            "body": body.decode(),
        }
    )
    channel.basic_ack(method.delivery_tag)
connection.close()
print(json.dumps({"published": published, "consumed": consumed}))
