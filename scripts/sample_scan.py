"""Scans the bundled sample repository through a running `cloudscan dev` (scripts/run): one scan
created over HTTP, one over gRPC; follows both with gRPC WatchScan, printing each state change as it
happens; then prints the findings by scanner and severity (read over HTTP for the one, with gRPC
GetFindings for the other).

    sample_scan.py --org ORG --artifact file:///tmp/cloudscan-sample.tgz [--http URL] [--grpc HOST:PORT]
"""

import argparse
import json
import os
import queue
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "Tests", "clients"))
from grpc_client import generate_stubs  # noqa: E402 (stubs from proto/, no generated Python in the repo)

import grpc  # noqa: E402

SEVERITIES = ["critical", "high", "medium", "low", "info"]
TYPES = ["sast", "secrets", "iac", "sca"]


def http(method, url, org, body=None, headers=None):
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"X-Cloudscan-Organization": org, "Content-Type": "application/json",
                                              **(headers or {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--org", required=True)
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--http", default="http://127.0.0.1:8080")
    parser.add_argument("--grpc", default="127.0.0.1:9999")
    parser.add_argument("--timeout", type=int, default=600)
    args = parser.parse_args()
    generate_stubs()
    from cloudscan.v1 import scan_service_pb2 as pb
    from cloudscan.v1 import scan_service_pb2_grpc as pb_grpc

    metadata = [("x-cloudscan-organization", args.org)]
    channel = grpc.insecure_channel(args.grpc)
    stub = pb_grpc.ScanServiceStub(channel)
    status_name = {v.number: v.name.replace("SCAN_STATUS_", "").lower() for v in pb.ScanStatus.DESCRIPTOR.values}
    severity_name = {v.number: v.name.replace("SEVERITY_", "").lower() for v in pb.Severity.DESCRIPTOR.values}

    # Each create starts a W3C trace of its own; the scan's logs, messages, runner and webhook carry it.
    traces = [os.urandom(16).hex() for _ in range(2)]
    started = time.time()
    over_http = http("POST", f"{args.http}/api/v1/scans", args.org, {
        "project": {"external_key": "sample"}, "scan_types": TYPES, "artifact": {"url": args.artifact},
        "labels": {"via": "http"}}, headers={"traceparent": f"00-{traces[0]}-{os.urandom(8).hex()}-01"})
    print(f"created over HTTP: {over_http['id']} ({over_http['status']})")
    over_grpc = stub.CreateScan(pb.CreateScanRequest(
        project=pb.ProjectReference(external_key="sample"), scan_types=TYPES,
        artifact=pb.Artifact(url=args.artifact), labels={"via": "grpc"}),
        metadata=metadata + [("traceparent", f"00-{traces[1]}-{os.urandom(8).hex()}-01")]).scan
    print(f"created over gRPC: {over_grpc.id} ({status_name[over_grpc.status]})")
    print(f"trace {over_http['id']} {traces[0]}")
    print(f"trace {over_grpc.id} {traces[1]}")

    events = queue.Queue()

    def watch(label, scan_id):
        try:
            for event in stub.WatchScan(pb.WatchScanRequest(id=scan_id), metadata=metadata,
                                        timeout=args.timeout):
                events.put((label, scan_id, event))
        except grpc.RpcError as error:
            events.put((label, scan_id, error))
        events.put((label, scan_id, None))

    for label, scan_id in (("http", over_http["id"]), ("grpc", over_grpc.id)):
        threading.Thread(target=watch, args=(label, scan_id), daemon=True).start()
    finals = {}
    while len(finals) < 2:
        label, scan_id, event = events.get()
        elapsed = f"{time.time() - started:6.1f}s"
        if event is None:
            finals.setdefault(scan_id, None)
            continue
        if isinstance(event, grpc.RpcError):
            print(f"{elapsed}  [{label}] watch ended: {event.code().name} {event.details()}")
            continue
        to = status_name[event.to_status]
        if event.from_status == 0:
            print(f"{elapsed}  [{label}] {scan_id[:8]} is {to}")
        else:
            reason = f"  ({event.reason})" if event.reason else ""
            print(f"{elapsed}  [{label}] {scan_id[:8]} {status_name[event.from_status]} → {to}{reason}")
        if to in ("completed", "failed", "canceled"):
            finals[scan_id] = to

    ok = True
    for label, scan_id in (("http", over_http["id"]), ("grpc", over_grpc.id)):
        scan = http("GET", f"{args.http}/api/v1/scans/{scan_id}", args.org)
        # Each scan's findings through the API it was created with: HTTP pages, or gRPC GetFindings.
        findings, cursor = [], None
        while True:
            if label == "http":
                page = http("GET", f"{args.http}/api/v1/scans/{scan_id}/findings?page_size=1000"
                            + (f"&cursor={cursor}" if cursor else ""), args.org)
                findings += page["items"]
                cursor = page.get("next_cursor")
            else:
                answer = stub.GetFindings(pb.GetFindingsRequest(scan_id=scan_id, page_size=1000,
                                                                page_token=cursor or ""), metadata=metadata)
                findings += [{"scanner": f.scanner, "severity": severity_name[f.severity]} for f in answer.findings]
                cursor = answer.next_page_token
            if not cursor:
                break
        table = {}
        for finding in findings:
            row = table.setdefault(finding["scanner"], dict.fromkeys(SEVERITIES, 0))
            row[finding["severity"]] += 1
        print(f"\nscan {scan_id} (created over {label.upper()}): {scan['status']}"
              + (f" — {scan.get('failure_reason')}" if scan.get("failure_reason") else ""))
        print(f"  {'scanner':<16}" + "".join(f"{s:>10}" for s in SEVERITIES) + f"{'total':>8}")
        for scanner in sorted(table):
            row = table[scanner]
            print(f"  {scanner:<16}" + "".join(f"{row[s]:>10}" for s in SEVERITIES) + f"{sum(row.values()):>8}")
        totals = {s: sum(r[s] for r in table.values()) for s in SEVERITIES}
        print(f"  {'all':<16}" + "".join(f"{totals[s]:>10}" for s in SEVERITIES) + f"{len(findings):>8}")
        ok = ok and scan["status"] == "completed"
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
