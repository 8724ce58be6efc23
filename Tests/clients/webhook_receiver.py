"""A webhook receiver that checks cloudscan's signature with Python's hmac (an outside implementation).

usage: webhook_receiver.py DIRECTORY SECRET PORT_FILE
POST /hook/NAME: behaves as DIRECTORY/NAME.mode says — "ok" (204, the default), "fail" (503),
"hang" (never answers within a minute), "slow" (204 after 0.5 s). Every request is appended to DIRECTORY/NAME.jsonl as
{"verified": bool, "fresh": bool, "delivery": ..., "event": ..., "status": <answer>, "body": {...}}.
The signature: X-Cloudscan-Signature: t=<unix>,v1=<hex HMAC-SHA256(SECRET, "<t>.<body>")>.
"""
import hashlib
import hmac
import http.server
import json
import os
import sys
import time

directory, secret, port_file = sys.argv[1], sys.argv[2].encode(), sys.argv[3]


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        name = os.path.basename(self.path.rstrip("/"))
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        fields = dict(p.split("=", 1) for p in self.headers.get("X-Cloudscan-Signature", "").split(",") if "=" in p)
        t = fields.get("t", "")
        expected = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
        verified = hmac.compare_digest(expected, fields.get("v1", ""))
        fresh = t.isdigit() and abs(time.time() - int(t)) < 300
        try:
            mode = open(os.path.join(directory, name + ".mode")).read().strip()
        except OSError:
            mode = "ok"
        status = {"ok": 204, "fail": 503}.get(mode, 204)
        record = {"verified": verified, "fresh": fresh, "delivery": self.headers.get("X-Cloudscan-Delivery"),
                  "event": self.headers.get("X-Cloudscan-Event"),
                  "traceparent": self.headers.get("traceparent"), "status": status if mode != "hang" else None,
                  "body": json.loads(body or b"{}")}
        with open(os.path.join(directory, name + ".jsonl"), "a") as out:
            out.write(json.dumps(record) + "\n")
        if mode == "hang":
            time.sleep(60)
            return
        if mode == "slow":
            time.sleep(0.5)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file, "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
