"""Writes the fuzz targets' seed corpora into Fuzz/corpus/<target>/ (committed; run again after
changing a contract). Each seed is a valid input, or a known-hostile one, of its target, so the
fuzzer starts from inputs that reach deep into the code instead of from random bytes.

usage: python3 Fuzz/make_seeds.py
"""
import base64
import gzip
import hashlib
import hmac
import io
import json
import shutil
import sys
import tarfile
import time
import uuid
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "Tests" / "clients"))
from raw_tar import pax_tar  # noqa: E402

ROOT = Path(__file__).resolve().parent / "corpus"
ORG = "6f1c2b3a-0d4e-4f5a-8b6c-7d8e9f0a1b2c"
SCAN = "0b9a8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d"


def target(name):
    path = ROOT / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    counter = iter(range(10_000))

    def put(data, label="seed"):
        data = data if isinstance(data, bytes) else data.encode()
        (path / f"{next(counter):03d}-{label}").write_bytes(data)

    return put


# Archives ---------------------------------------------------------------------------------

def tar_bytes(entries, fmt=tarfile.PAX_FORMAT, gz=False):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w", format=fmt) as archive:
        for name, kind, data, link in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buffer.getvalue()


REG, DIR, SYM, LNK = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
good = [("src/", DIR, b"", ""), ("src/app.py", REG, b"print('hi')\n", ""), ("src/run.sh", REG, b"#!/bin/sh\n", ""),
        ("src/link.py", SYM, b"", "app.py"), ("src/copy.py", LNK, b"", "src/app.py"), ("README", REG, b"# r\n", "")]
long_names = [("d/" + "n" * 150 + ".txt", REG, b"long\n", ""), ("l" * 120, SYM, b"", "d/" + "n" * 150 + ".txt")]
nested = []
path = "a"
for i in range(6):
    path += f"/l{i}"
    nested.append((path, SYM, b"", ".."))
hostile = [
    [("../evil", REG, b"x", "")], [("/abs", REG, b"x", "")], [("x", SYM, b"", "../../etc")],
    [("x/a", SYM, b"", ".."), ("x/b", SYM, b"", "a/../..")], [("o", SYM, b"", "/tmp"), ("o/f", REG, b"x", "")],
    [("h", LNK, b"", "../etc/passwd")], [("d", SYM, b"", "."), ("d/d/d/", DIR, b"", "")], nested,
    [("f", REG, b"1", ""), ("f", REG, b"2", ""), ("f/g", REG, b"3", "")],
    # Names that Swift's Characters split differently from the kernel's bytes.
    [("../\u0301x", REG, b"x", "")],
    [("d/up", SYM, b"", ".."), ("k\u0600", SYM, b"", "d/up/.."), ("k\u0600/f", REG, b"x", "")],
    [("\u00e9/a/up", SYM, b"", "../.."), ("e\u0301/a/l", SYM, b"", "up/../.."), ("\u00e9/a/f", REG, b"x", "")],
]


tars = [tar_bytes(good), tar_bytes(good, tarfile.GNU_FORMAT), tar_bytes(good, tarfile.USTAR_FORMAT),
        tar_bytes(long_names), tar_bytes(long_names, tarfile.GNU_FORMAT)] + [tar_bytes(h) for h in hostile] + [
    pax_tar(b"1 x"), pax_tar(b"12 path=abc\n"), pax_tar(b"99999999999999999999 path=x\n"), pax_tar(b"16 size=99999\n")]


def zip_bytes(entries, method=zipfile.ZIP_DEFLATED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            if mode is not None:
                info.create_system = 3
                info.external_attr = mode << 16
            archive.writestr(info, data)
    return buffer.getvalue()


zips = [zip_bytes([("src/app.py", "print('hi')\n" * 20, None), ("src/empty/", "", None),
                   ("src/link.py", "app.py", 0o120777), ("run.sh", "#!/bin/sh\n", 0o100755)]),
        zip_bytes([("a.txt", "stored\n", None)], zipfile.ZIP_STORED),
        zip_bytes([("../../evil", "x", None)]), zip_bytes([("l", "../../../etc", 0o120777)]),
        zip_bytes([("dev", "", 0o020644)]), zip_bytes([("z.bin", b"\0" * 100_000, None)])]

put = target("tar")
for data in tars:
    put(data, "tar")
put = target("zip")
for data in zips:
    put(data, "zip")
put = target("extract")
for data in tars + zips:
    put(data)
for data in tars[:3] + [tar_bytes(h) for h in hostile[:4]]:
    put(gzip.compress(data, mtime=0), "tgz")

# Messages ---------------------------------------------------------------------------------

def finding(i, **extra):
    item = {"scanner": "semgrep", "rule_id": f"rule.{i}", "severity": ["critical", "high", "medium", "low", "info"][i % 5],
            "title": f"Finding {i}", "fingerprint": hashlib.sha256(str(i).encode()).hexdigest()}
    item.update(extra)
    return item


def batch(findings, **extra):
    body = {"scan_id": SCAN, "organization_id": ORG, "attempt": 1, "batch_index": 0, "runner_token": "v1.abc",
            "findings": findings}
    body.update(extra)
    return json.dumps(body)


put = target("findings-batch")
put(batch([finding(0)]))
put(batch([finding(i, message="m", path=f"src/{i}.py", line=i + 1, column=2, cwe=["CWE-79", "CWE-89"],
                    raw={"ruleId": f"r{i}", "locations": [{"x": [1, 2.5, None, True]}]}) for i in range(5)]))
put(batch([finding(1, title="esc \" \\ \n \u00e9 \ud83d\ude00", message="\\u0000 nul")]))
put(batch([finding(2, raw={"a": "\ud800 lone", "b": {"c": [{}]}})]).replace("\\ud800", "\\ud800"))
put(batch([], attempt=0))
put(batch([finding(3, line=2147483647, column=0)]))
put('{"scan_id":"%s","organization_id":"%s","attempt":1,"batch_index":0,"runner_token":"t","findings":[{"scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"f","raw":{"k":"v","k":"w"}}]}' % (SCAN, ORG))
put(batch([finding(4)], extra_field=1))
put(batch([finding(5, severity="urgent")]))
put(batch([finding(6, cwe=["79"])]))

def report(kind, **extra):
    body = {"scan_id": SCAN, "organization_id": ORG, "attempt": 1, "kind": kind, "at": "2026-12-07T10:00:00.000Z",
            "runner_token": "v1.abc"}
    body.update(extra)
    return json.dumps(body)


put = target("status-report")
put(report("started"))
put(report("heartbeat"))
put(report("failed", reason="archive_link_escape", message="a link escaped"))
put(report("completed", findings_batches=3, counts={"critical": 1, "high": 2, "low": 0},
           scanners=[{"name": "semgrep", "outcome": "ok", "duration_ms": 1200, "findings": 3},
                     {"name": "checkov", "outcome": "timed_out", "reason": "limit"}], partial=True, reason="partial"))
put(report("completed", findings_batches=2147483648))
put(report("completed", counts={"high": 1 << 40}))

put = target("scan-create")
def create(**extra):
    body = {"scan_id": SCAN, "organization_id": ORG, "project": {"external_key": "proj-123"}, "scan_types": ["sast"],
            "artifact": {"url": "https://storage.example/a.tar.gz"}, "requested_at": "2026-12-07T10:00:00.000Z"}
    body.update(extra)
    return json.dumps(body)
put(create())
put(create(project={"id": str(uuid.UUID(int=7))}, scan_types=["sast", "secrets", "iac", "sca"],
           artifact={"url": "s3://bucket/%s/a.tgz" % ORG, "sha256": "a" * 64}, timeout_seconds=600,
           labels={"branch": "main", "team/x": "y"}, metadata={"k": 1}))
put(create(artifact={"url": "file:///srv/artifacts/%s/a.tgz" % ORG}))
put(create(artifact={"url": "file:///etc/passwd"}))
put(create(artifact={"url": "https://x/a", "sha256": "\uff10" * 64}))
put(create(scan_types=[]))

# Scanner output ---------------------------------------------------------------------------

sarif = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "semgrep", "rules": [
    {"id": "python.eval", "shortDescription": {"text": "eval"}, "properties": {"security-severity": "9.1",
     "tags": ["CWE-95: eval", "security"]}, "relationships": [{"target": {"id": "CWE-78", "toolComponent": {"name": "CWE"}}}]},
    {"id": "js.xss", "defaultConfiguration": {"level": "warning"}}]}},
    "results": [
        {"ruleId": "python.eval", "level": "error", "message": {"text": "eval of input"},
         "locations": [{"physicalLocation": {"artifactLocation": {"uri": "file:///work/src/app.py"},
                                             "region": {"startLine": 3, "startColumn": 5, "snippet": {"text": "eval(x)"}}}}],
         "partialFingerprints": {"primaryLocationLineHash": "abc"}},
        {"ruleIndex": 1, "message": {"text": "xss"}, "locations": [{"physicalLocation": {"artifactLocation": {"uri": "web/a.js"},
                                                                                        "region": {"startLine": 9}}}]},
        {"ruleId": "python.eval", "suppressions": [{"kind": "inSource"}], "message": {"text": "s"}},
        {"ruleId": "x", "kind": "pass", "message": {"text": "p"}},
        {"ruleId": "python.eval", "message": {"text": "again"}, "locations": [{"physicalLocation": {
            "artifactLocation": {"uri": "./src/app.py"}, "region": {"startLine": 3, "snippet": {"text": "eval(x)"}}}}]}]}]}
shellcheck = {"comments": [{"file": "run.sh", "line": 2, "endLine": 2, "column": 1, "endColumn": 5, "level": "warning",
                            "code": 2086, "message": "Double quote to prevent globbing."},
                           {"file": "x.sh", "line": 1, "column": 1, "level": "error", "code": 1000, "message": "m"}]}
detect = {"results": {"config.py": [{"type": "AWS Access Key", "line_number": 4, "hashed_secret": "ab" * 20,
                                     "is_verified": False}], "b.env": [{"type": "Secret Keyword", "line_number": 1}]}}
put = target("sarif")
put(b"\x00" + json.dumps(sarif).encode(), "sarif")
put(b"\x04" + json.dumps(sarif).encode(), "sarif-last")
put(b"\x00" + json.dumps({"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "t"}}, "results": [
    {"message": {"text": "no rule"}, "properties": {"security-severity": "nan"}}]}]}).encode(), "sarif")
put(b"\x01" + json.dumps(shellcheck).encode(), "shellcheck")
put(b"\x02" + json.dumps(detect).encode(), "detect-secrets")

# Tokens -----------------------------------------------------------------------------------

SECRET = b"fuzz-hs256-secret-0123456789abcdefghijklmnop"
b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(claims, alg="HS256"):
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims).encode())
    signature = b64(hmac.new(SECRET, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


far = 4102444800  # 2100-01-01
put = target("jwt")
put("\x00" + token({"iss": "https://issuer.fuzz", "aud": "cloudscan", "sub": "s", "org_id": ORG, "exp": far,
                    "roles": ["org-admin"]}), "token")
put("\x00" + token({"iss": "https://issuer.fuzz", "aud": ["cloudscan", "x"], "sub": "s", "org_id": ORG, "exp": far,
                    "nbf": 0}), "token")
put("\x00" + token({"iss": "https://issuer.fuzz", "aud": "cloudscan", "exp": far, "roles": ["platform-admin"]}), "token")
put("\x00" + token({"iss": "https://issuer.fuzz", "aud": "cloudscan", "org_id": ORG, "exp": 1}), "expired")
put("\x00" + token({"iss": "x"}, alg="none"), "none")
jwks = {"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": b64(SECRET)},
                 {"kty": "RSA", "kid": "r1", "alg": "RS256", "n": b64(b"\xc3" * 256), "e": "AQAB"},
                 {"kty": "EC", "kid": "e1", "crv": "P-256", "x": b64(b"\x01" * 32), "y": b64(b"\x02" * 32)}]}
put("\x01" + json.dumps(jwks), "jwks")
put("\x01" + json.dumps({"keys": []}), "jwks")
print("seeds written to", ROOT)
