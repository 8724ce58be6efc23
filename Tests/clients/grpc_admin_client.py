"""An outside gRPC client for cloudscan.v1.AdminService (stubs from proto/, plain grpcio, tokens
signed here with Python's hmac): platform admins manage organizations, an organization's admins
its projects, nobody another organization's. Prints each check; exits non-zero on failures.

    grpc_admin_client.py --port P --secret S --issuer I --audience A --org A --other B \
                         --other-project B_PROJECT_ID
"""

import argparse
import base64
import hashlib
import hmac
import json
import sys
import time

import grpc

from grpc_client import check, code_of, generate_stubs
import grpc_client


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(secret, issuer, audience, org, roles, subject):
    claims = {"iss": issuer, "aud": audience, "sub": subject, "exp": int(time.time()) + 600, "roles": roles}
    if org:
        claims["org_id"] = org
    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    return signing_input + "." + b64(hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest())


def main():
    parser = argparse.ArgumentParser()
    for name in ("port", "secret", "issuer", "audience", "org", "other", "other-project"):
        parser.add_argument("--" + name, required=True)
    args = parser.parse_args()
    generate_stubs()
    from cloudscan.v1 import scan_service_pb2 as pb
    from cloudscan.v1 import scan_service_pb2_grpc as pb_grpc

    stub = pb_grpc.AdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{args.port}"))

    def as_(org, roles, subject="py"):
        return [("authorization", "Bearer " + token(args.secret, args.issuer, args.audience, org, roles, subject))]

    platform = as_(None, ["platform-admin"], "ops-py")
    a_admin = as_(args.org, ["org-admin"], "admin-a-py")
    gateway = as_(args.org, [])

    # Organizations: platform admins only.
    created = stub.CreateOrganization(
        pb.CreateOrganizationRequest(name="Grpc Org", slug="grpc-org", retention_days=45), metadata=platform)
    check(created.slug == "grpc-org" and created.retention_days == 45 and created.concurrency_quota == 10,
          "CreateOrganization as platform admin: defaults filled in")
    updated = stub.UpdateOrganization(
        pb.UpdateOrganizationRequest(id=created.id, concurrency_quota=2, disabled=True), metadata=platform)
    check(updated.concurrency_quota == 2 and updated.disabled and updated.retention_days == 45,
          "UpdateOrganization changes only the fields sent")
    listed = stub.ListOrganizations(pb.ListOrganizationsRequest(page_size=500), metadata=platform)
    check("grpc-org" in [o.slug for o in listed.organizations], "ListOrganizations lists it")
    for who, metadata in (("a gateway", gateway), ("an org admin", a_admin)):
        code, _ = code_of(lambda: stub.CreateOrganization(
            pb.CreateOrganizationRequest(name="X", slug="x-" + who.replace(" ", "")), metadata=metadata))
        check(code == grpc.StatusCode.PERMISSION_DENIED, f"CreateOrganization as {who}: PERMISSION_DENIED ({code})")
        code, _ = code_of(lambda: stub.UpdateOrganization(
            pb.UpdateOrganizationRequest(id=args.other, retention_days=1), metadata=metadata))
        check(code == grpc.StatusCode.PERMISSION_DENIED, f"UpdateOrganization of B as {who}: PERMISSION_DENIED")
        code, _ = code_of(lambda: stub.GetOrganization(pb.GetOrganizationRequest(id=args.other), metadata=metadata))
        check(code == grpc.StatusCode.PERMISSION_DENIED, f"GetOrganization of B as {who}: PERMISSION_DENIED")
    own = stub.GetOrganization(pb.GetOrganizationRequest(), metadata=gateway)
    check(own.id == args.org, "GetOrganization with no id: the caller's own")
    code, trailers = code_of(lambda: stub.CreateOrganization(
        pb.CreateOrganizationRequest(name="Bad", slug="Bad Slug"), metadata=platform))
    check(code == grpc.StatusCode.INVALID_ARGUMENT and trailers.get("cloudscan-field") == "slug",
          f"an invalid slug: INVALID_ARGUMENT naming slug ({code}, {trailers.get('cloudscan-field')})")

    # Projects: the organization's admins change them, members read them, B's do not exist for A.
    project = stub.CreateProject(
        pb.CreateProjectRequest(name="Api", external_key="proj-grpc", default_scan_types=["sast", "iac"],
                                scanner_options_json='{"semgrep":{"exclude_paths":["tests/*"]}}', timeout_seconds=600),
        metadata=a_admin)
    check(project.external_key == "proj-grpc" and list(project.default_scan_types) == ["sast", "iac"]
          and json.loads(project.scanner_options_json) == {"semgrep": {"exclude_paths": ["tests/*"]}},
          "CreateProject as A's admin")
    code, _ = code_of(lambda: stub.CreateProject(
        pb.CreateProjectRequest(name="No", external_key="proj-no"), metadata=gateway))
    check(code == grpc.StatusCode.PERMISSION_DENIED, "CreateProject as a gateway: PERMISSION_DENIED")
    code, trailers = code_of(lambda: stub.CreateProject(
        pb.CreateProjectRequest(name="Dup", external_key="proj-grpc"), metadata=a_admin))
    check(code == grpc.StatusCode.ABORTED and trailers.get("cloudscan-field") == "external_key",
          f"a duplicate external key: ABORTED naming external_key ({code})")
    changed = stub.UpdateProject(pb.UpdateProjectRequest(id=project.id, name="Api v2"), metadata=a_admin)
    check(changed.name == "Api v2" and changed.timeout_seconds == 600, "UpdateProject changes only the name")
    keys = [p.external_key for p in stub.ListProjects(pb.ListProjectsRequest(), metadata=gateway).projects]
    check(sorted(keys) == ["proj-123", "proj-grpc"], f"ListProjects as A's gateway: A's only ({keys})")
    for name, call in (
            ("GetProject", lambda: stub.GetProject(pb.GetProjectRequest(id=args.other_project), metadata=a_admin)),
            ("UpdateProject", lambda: stub.UpdateProject(
                pb.UpdateProjectRequest(id=args.other_project, name="taken"), metadata=a_admin)),
            ("ArchiveProject", lambda: stub.ArchiveProject(
                pb.ArchiveProjectRequest(id=args.other_project), metadata=a_admin))):
        code, _ = code_of(call)
        check(code == grpc.StatusCode.NOT_FOUND, f"{name} of B's project as A's admin: NOT_FOUND ({code})")
    archived = stub.ArchiveProject(pb.ArchiveProjectRequest(id=project.id), metadata=a_admin)
    check(archived.archived, "ArchiveProject")
    keys = [p.external_key for p in stub.ListProjects(pb.ListProjectsRequest(include_archived=True),
                                                      metadata=a_admin).projects]
    check("proj-grpc" in keys, "archived projects listed on request")

    print(f"{grpc_client.failures} failures")
    sys.exit(1 if grpc_client.failures else 0)


if __name__ == "__main__":
    main()
