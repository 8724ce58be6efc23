"""An outside gRPC client for cloudscan: stubs generated from proto/ by grpcio-tools, plain grpcio.

Exercises every ScanService RPC, the health service and server reflection (v1, as grpcurl uses,
and v1alpha, as grpcio-reflection uses), bad tokens and organization isolation. Prints what it
checked; exits non-zero on the first failed expectation.

    grpc_client.py --port P --secret S --issuer I --audience A --org ORG --other OTHER \
                   --findings-scan SCAN_ID
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc
import grpc_tools

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRPC_PROTO = "/usr/share/grpc-proto"


def generate_stubs():
    out = tempfile.mkdtemp(prefix="cloudscan-stubs-")
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    protos = ["cloudscan/v1/scan_service.proto"]
    args = ["protoc", f"-I{ROOT}/proto", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + protos) != 0:
        sys.exit("protoc failed for scan_service.proto")
    # grpc.reflection.v1 would shadow the grpc package: compile it under another module path.
    os.makedirs(os.path.join(out, "protos", "reflection_v1"))
    with open(os.path.join(GRPC_PROTO, "grpc/reflection/v1/reflection.proto")) as source, \
            open(os.path.join(out, "protos", "reflection_v1", "reflection.proto"), "w") as target:
        target.write(source.read())
    if protoc.main(["protoc", f"-I{out}/protos", f"-I{include}", f"--python_out={out}",
                    f"--grpc_python_out={out}", "reflection_v1/reflection.proto"]) != 0:
        sys.exit("protoc failed for reflection v1")
    sys.path.insert(0, out)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(secret, org, issuer, audience, *, exp_offset=600, nbf_offset=None, alg="HS256", sign_with=None,
          roles=("scanner",), subject="gateway-py"):
    header = {"alg": alg, "typ": "JWT"}
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "sub": subject, "org_id": org, "exp": now + exp_offset,
              "roles": list(roles)}
    if nbf_offset is not None:
        claims["nbf"] = now + nbf_offset
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    key = (sign_with or secret).encode()
    signature = b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest()) if alg == "HS256" else ""
    return signing_input + "." + signature


failures = 0


def check(condition, what):
    global failures
    print(("ok   " if condition else "FAIL ") + what, flush=True)
    if not condition:
        failures += 1


def code_of(call):
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), dict(error.trailing_metadata() or ())
    return grpc.StatusCode.OK, {}


def main():
    sys.stderr = sys.stdout  # the test captures one stream
    parser = argparse.ArgumentParser()
    for name in ["port", "secret", "issuer", "audience", "org", "other", "findings-scan"]:
        parser.add_argument("--" + name, required=True)
    args = parser.parse_args()
    generate_stubs()
    from cloudscan.v1 import scan_service_pb2 as pb
    from cloudscan.v1 import scan_service_pb2_grpc as pb_grpc
    from reflection_v1 import reflection_pb2 as refl_v1
    from reflection_v1 import reflection_pb2_grpc as refl_v1_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{args.port}")
    stub = pb_grpc.ScanServiceStub(channel)
    a = [("authorization", "Bearer " + token(args.secret, args.org, args.issuer, args.audience))]
    b = [("authorization", "Bearer " + token(args.secret, args.other, args.issuer, args.audience))]
    a_admin = [("authorization", "Bearer " + token(args.secret, args.org, args.issuer, args.audience,
                                                   roles=["org-admin"], subject="admin-py"))]
    b_admin = [("authorization", "Bearer " + token(args.secret, args.other, args.issuer, args.audience,
                                                   roles=["org-admin"], subject="admin-b-py"))]

    # Reflection v1, the way grpcurl lists services: no .proto file on this side.
    reflection = refl_v1_grpc.ServerReflectionStub(channel)
    answers = list(reflection.ServerReflectionInfo(iter([refl_v1.ServerReflectionRequest(list_services="*")])))
    services = sorted(s.name for s in answers[0].list_services_response.service)
    print("reflection v1 list:")
    for name in services:
        print("  " + name)
    check("cloudscan.v1.ScanService" in services and "cloudscan.v1.WebhookService" in services
          and "grpc.health.v1.Health" in services,
          "reflection v1 lists cloudscan.v1.ScanService, cloudscan.v1.WebhookService and grpc.health.v1.Health")
    answers = list(reflection.ServerReflectionInfo(iter([
        refl_v1.ServerReflectionRequest(file_containing_symbol="cloudscan.v1.ScanService.WatchScan"),
        refl_v1.ServerReflectionRequest(file_containing_symbol="no.such.Symbol")])))
    names = []
    from google.protobuf import descriptor_pb2
    for raw in answers[0].file_descriptor_response.file_descriptor_proto:
        fd = descriptor_pb2.FileDescriptorProto()
        fd.ParseFromString(raw)
        names.append(fd.name)
    check(names[:1] == ["cloudscan/v1/scan_service.proto"] and "google/protobuf/timestamp.proto" in names,
          f"reflection v1 file_containing_symbol gives the file and its imports: {names}")
    check(answers[1].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0],
          "reflection v1: an unknown symbol is NOT_FOUND")
    # v1alpha through grpcio-reflection's own client: rebuild the service from the server alone.
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    methods = [m.name for m in pool.FindServiceByName("cloudscan.v1.ScanService").methods]
    print("reflection v1alpha cloudscan.v1.ScanService methods: " + " ".join(methods))
    check(methods == ["CreateScan", "GetScan", "ListScans", "CancelScan", "GetFindings", "UpdateScan", "WatchScan"],
          "reflection v1alpha describes every method")

    health = health_pb2_grpc.HealthStub(channel)
    check(health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING,
          "health: SERVING")
    check(code_of(lambda: health.Check(health_pb2.HealthCheckRequest(service="nope")))[0] == grpc.StatusCode.NOT_FOUND,
          "health: unknown service is NOT_FOUND")

    # Bad tokens: each is UNAUTHENTICATED.
    bad = {
        "no token": [],
        "forged": [("authorization", "Bearer " + token(args.secret, args.org, args.issuer, args.audience,
                                                       sign_with="x" * 40))],
        "expired": [("authorization", "Bearer " + token(args.secret, args.org, args.issuer, args.audience,
                                                        exp_offset=-120))],
        "not yet valid": [("authorization", "Bearer " + token(args.secret, args.org, args.issuer, args.audience,
                                                              nbf_offset=3600))],
        "wrong audience": [("authorization", "Bearer " + token(args.secret, args.org, args.issuer, "someone-else"))],
        "wrong issuer": [("authorization", "Bearer " + token(args.secret, args.org, "https://evil", args.audience))],
        "alg none": [("authorization", "Bearer " + token(args.secret, args.org, args.issuer, args.audience,
                                                         alg="none"))],
    }
    for what, metadata in bad.items():
        code, _ = code_of(lambda: stub.ListScans(pb.ListScansRequest(), metadata=metadata))
        check(code == grpc.StatusCode.UNAUTHENTICATED, f"{what} token → UNAUTHENTICATED ({code})")

    # CreateScan, with and without an idempotency key.
    request = pb.CreateScanRequest(project=pb.ProjectReference(external_key="proj-123"), scan_types=["sast", "secrets"],
                                   artifact=pb.Artifact(url="https://storage.local/a.tar.gz"), labels={"branch": "main"})
    created = stub.CreateScan(request, metadata=a)
    scan = created.scan
    check(scan.status == pb.SCAN_STATUS_QUEUED and not created.replayed and list(scan.scan_types) == ["sast", "secrets"],
          "CreateScan → queued scan")
    keyed = a + [("idempotency-key", "py-key-1")]
    first = stub.CreateScan(request, metadata=keyed)
    again = stub.CreateScan(request, metadata=keyed)
    check(again.replayed and again.scan.id == first.scan.id, "same idempotency key and body → same scan, replayed")
    other_body = pb.CreateScanRequest(project=pb.ProjectReference(external_key="proj-123"), scan_types=["iac"],
                                      artifact=pb.Artifact(url="https://storage.local/b.tar.gz"))
    code, _ = code_of(lambda: stub.CreateScan(other_body, metadata=keyed))
    check(code == grpc.StatusCode.ALREADY_EXISTS, f"same key, other body → ALREADY_EXISTS ({code})")
    for what, bad_request, field in [
        ("unknown scan type", pb.CreateScanRequest(project=pb.ProjectReference(external_key="proj-123"),
                                                    scan_types=["dast"], artifact=pb.Artifact(url="https://x/a")),
         "scan_types"),
        ("bad artifact url", pb.CreateScanRequest(project=pb.ProjectReference(external_key="proj-123"),
                                                   scan_types=["sast"], artifact=pb.Artifact(url="ftp://x")),
         "artifact.url"),
        ("no project", pb.CreateScanRequest(scan_types=["sast"], artifact=pb.Artifact(url="https://x/a")), "project"),
        # Hostile: fullwidth digits pass a Unicode-wide hex check; host files and plain http (metadata
        # service) are refused outside development; control characters in a key.
        ("fullwidth sha256", pb.CreateScanRequest(project=pb.ProjectReference(external_key="proj-123"),
                                                  scan_types=["sast"],
                                                  artifact=pb.Artifact(url="https://x/a", sha256="\uff10" * 64)),
         "artifact.sha256"),
        ("host file artifact", pb.CreateScanRequest(project=pb.ProjectReference(external_key="proj-123"),
                                                    scan_types=["sast"], artifact=pb.Artifact(url="file:///etc/passwd")),
         "artifact.url"),
        ("metadata-service artifact", pb.CreateScanRequest(
            project=pb.ProjectReference(external_key="proj-123"), scan_types=["sast"],
            artifact=pb.Artifact(url="http://169.254.169.254/latest/meta-data")), "artifact.url"),
        ("NUL in the project key", pb.CreateScanRequest(project=pb.ProjectReference(external_key="proj\x00123"),
                                                        scan_types=["sast"], artifact=pb.Artifact(url="https://x/a")),
         "project.external_key"),
    ]:
        code, trailers = code_of(lambda: stub.CreateScan(bad_request, metadata=a))
        check(code == grpc.StatusCode.INVALID_ARGUMENT and trailers.get("cloudscan-field") == field,
              f"{what} → INVALID_ARGUMENT naming {field} ({code}, {trailers.get('cloudscan-field')})")
    code, _ = code_of(lambda: stub.CreateScan(request, metadata=b))
    check(code == grpc.StatusCode.INVALID_ARGUMENT, "B cannot create in A's project (no such project for B)")

    # GetScan, ListScans with filters and pages.
    got = stub.GetScan(pb.GetScanRequest(id=scan.id), metadata=a)
    check(got.id == scan.id and got.labels["branch"] == "main", "GetScan returns the scan")
    check(code_of(lambda: stub.GetScan(pb.GetScanRequest(id="not-a-uuid"), metadata=a))[0]
          == grpc.StatusCode.INVALID_ARGUMENT, "GetScan with a bad id → INVALID_ARGUMENT")
    seen, token_ = [], ""
    while True:
        page = stub.ListScans(pb.ListScansRequest(page_size=2, page_token=token_, status=pb.SCAN_STATUS_QUEUED),
                              metadata=a)
        seen += [s.id for s in page.scans]
        token_ = page.next_page_token
        if not token_:
            break
    check(len(seen) == len(set(seen)) and scan.id in seen and first.scan.id in seen,
          f"ListScans pages by token, each scan once ({len(seen)} scans)")

    # A Timestamp far past year 9999 is refused, not a crash of the server.
    from google.protobuf import timestamp_pb2
    for seconds in [10 ** 13, 2 ** 62, -(10 ** 13)]:
        far = pb.ListScansRequest(created_after=timestamp_pb2.Timestamp(seconds=seconds))
        code, trailers = code_of(lambda: stub.ListScans(far, metadata=a))
        check(code == grpc.StatusCode.INVALID_ARGUMENT and trailers.get("cloudscan-field") == "created_after",
              f"ListScans created_after={seconds} → INVALID_ARGUMENT ({code})")
    check(stub.ListScans(pb.ListScansRequest(), metadata=a) is not None, "the server is still up")

    # UpdateScan replaces labels only.
    updated = stub.UpdateScan(pb.UpdateScanRequest(id=scan.id, labels={"team": "red"}), metadata=a)
    check(dict(updated.labels) == {"team": "red"} and updated.status == pb.SCAN_STATUS_QUEUED,
          "UpdateScan replaces the labels, status unchanged")
    code, trailers = code_of(lambda: stub.UpdateScan(pb.UpdateScanRequest(id=scan.id, labels={"Bad Key": "x"}),
                                                     metadata=a))
    check(code == grpc.StatusCode.INVALID_ARGUMENT, "UpdateScan with a bad label key → INVALID_ARGUMENT")

    # GetFindings on the scan the test seeded.
    findings = stub.GetFindings(pb.GetFindingsRequest(scan_id=args.findings_scan, page_size=100), metadata=a)
    check(len(findings.findings) == 25, f"GetFindings returns the 25 seeded findings ({len(findings.findings)})")
    critical = stub.GetFindings(pb.GetFindingsRequest(scan_id=args.findings_scan, severities=[pb.SEVERITY_CRITICAL],
                                                      scanner="semgrep", path_prefix="src/"), metadata=a)
    check(all(f.severity == pb.SEVERITY_CRITICAL and f.scanner == "semgrep" and f.path.startswith("src/")
              for f in critical.findings) and len(critical.findings) > 0,
          f"GetFindings filters by severity, scanner and path prefix ({len(critical.findings)})")

    # Organization B sees nothing of A's.
    check(code_of(lambda: stub.GetScan(pb.GetScanRequest(id=scan.id), metadata=b))[0] == grpc.StatusCode.NOT_FOUND,
          "B: GetScan of A's scan → NOT_FOUND")
    check(len(stub.ListScans(pb.ListScansRequest(), metadata=b).scans) == 0, "B: ListScans shows none of A's")
    check(code_of(lambda: stub.CancelScan(pb.CancelScanRequest(id=scan.id), metadata=b))[0]
          == grpc.StatusCode.NOT_FOUND, "B: CancelScan of A's scan → NOT_FOUND")
    check(code_of(lambda: stub.UpdateScan(pb.UpdateScanRequest(id=scan.id, labels={}), metadata=b))[0]
          == grpc.StatusCode.NOT_FOUND, "B: UpdateScan of A's scan → NOT_FOUND")
    check(code_of(lambda: stub.GetFindings(pb.GetFindingsRequest(scan_id=args.findings_scan), metadata=b))[0]
          == grpc.StatusCode.NOT_FOUND, "B: GetFindings of A's scan → NOT_FOUND")
    check(code_of(lambda: list(stub.WatchScan(pb.WatchScanRequest(id=scan.id), metadata=b)))[0]
          == grpc.StatusCode.NOT_FOUND, "B: WatchScan of A's scan → NOT_FOUND")

    # WatchScan: the current state first; a cancel ends the stream at the final state.
    stream = stub.WatchScan(pb.WatchScanRequest(id=scan.id), metadata=a)
    first_event = next(stream)
    check(first_event.to_status == pb.SCAN_STATUS_QUEUED and first_event.from_status == pb.SCAN_STATUS_UNSPECIFIED,
          "WatchScan starts with the scan as it is (queued)")
    canceled = stub.CancelScan(pb.CancelScanRequest(id=scan.id), metadata=a)
    check(canceled.status == pb.SCAN_STATUS_CANCELED, "CancelScan → canceled")
    rest = list(stream)
    check([(e.from_status, e.to_status) for e in rest] == [(pb.SCAN_STATUS_QUEUED, pb.SCAN_STATUS_CANCELED)],
          f"WatchScan streams the cancel once and ends ({[(e.from_status, e.to_status) for e in rest]})")
    code, _ = code_of(lambda: stub.CancelScan(pb.CancelScanRequest(id=scan.id), metadata=a))
    check(code == grpc.StatusCode.FAILED_PRECONDITION, f"cancelling a finished scan → FAILED_PRECONDITION ({code})")

    # Webhook subscriptions (cloudscan.v1.WebhookService): the secret once, the organization's own only.
    hooks = pb_grpc.WebhookServiceStub(channel)
    # Managing subscriptions takes the organization-admin role; a member (no roles) may not.
    public_url = "https://93.184.216.34/grpc"
    code, _ = code_of(lambda: hooks.CreateWebhook(pb.CreateWebhookRequest(url=public_url), metadata=a))
    check(code == grpc.StatusCode.PERMISSION_DENIED, f"a member's CreateWebhook → PERMISSION_DENIED ({code})")
    made = hooks.CreateWebhook(pb.CreateWebhookRequest(url=public_url, events=["scan.failed"],
                                                       minimum_severity=pb.SEVERITY_HIGH), metadata=a_admin)
    check(made.secret.startswith("whsec_") and list(made.events) == ["scan.failed"]
          and made.minimum_severity == pb.SEVERITY_HIGH and made.payload_format == "json",
          "CreateWebhook answers the subscription with its generated secret")
    listed = hooks.ListWebhooks(pb.ListWebhooksRequest(), metadata=a_admin).webhooks
    check([w.id for w in listed] == [made.id] and listed[0].secret == "", "ListWebhooks shows it, without the secret")
    check(list(hooks.ListWebhooks(pb.ListWebhooksRequest(), metadata=b_admin).webhooks) == [],
          "B: ListWebhooks shows none of A's")
    check(code_of(lambda: hooks.DeleteWebhook(pb.DeleteWebhookRequest(id=made.id), metadata=b_admin))[0]
          == grpc.StatusCode.NOT_FOUND, "B: DeleteWebhook of A's → NOT_FOUND")
    check(code_of(lambda: hooks.DeleteWebhook(pb.DeleteWebhookRequest(id=made.id), metadata=a))[0]
          == grpc.StatusCode.PERMISSION_DENIED, "a member cannot delete the admin's subscription")
    code, _ = code_of(lambda: hooks.CreateWebhook(pb.CreateWebhookRequest(url="ftp://x/y"), metadata=a_admin))
    check(code == grpc.StatusCode.INVALID_ARGUMENT, f"CreateWebhook with a bad URL → INVALID_ARGUMENT ({code})")
    for internal in ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8080/", "http://[::1]/",
                     "http://10.1.2.3/", "http://[::ffff:169.254.169.254]/", "http://0x7f000001/",
                     "http://localhost/", "http://100.100.100.200/"]:
        code, trailers = code_of(lambda: hooks.CreateWebhook(pb.CreateWebhookRequest(url=internal), metadata=a_admin))
        check(code == grpc.StatusCode.INVALID_ARGUMENT and trailers.get("cloudscan-field") == "url",
              f"CreateWebhook to {internal} → INVALID_ARGUMENT ({code})")
    hooks.DeleteWebhook(pb.DeleteWebhookRequest(id=made.id), metadata=a_admin)
    check(list(hooks.ListWebhooks(pb.ListWebhooksRequest(), metadata=a_admin).webhooks) == [],
          "DeleteWebhook removes it")

    print(f"{failures} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
