"""Writes the archives the runner's extraction tests use, good and malicious, into DIR.

usage: make_archives.py DIR [ESCAPE_NAME]

ESCAPE_NAME (default cloudscan-escape) names the last link of nested-links.tar, so a test can
look for it anywhere an escape would have put it (up to the filesystem root).
"""
import io
import os
import sys
import tarfile
import zipfile
from pathlib import Path

from raw_tar import pax_tar

out = Path(sys.argv[1])
escape_name = sys.argv[2] if len(sys.argv) > 2 else "cloudscan-escape"
out.mkdir(parents=True, exist_ok=True)


def tar(name, entries, mode="w:gz"):
    with tarfile.open(out / name, mode) as archive:
        for entry in entries:
            archive.addfile(*entry)


def member(name, data=b"", kind=tarfile.REGTYPE, link="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = mode
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return (info, io.BytesIO(data)) if kind == tarfile.REGTYPE else (info,)


tar("good.tar.gz", [
    member("./", kind=tarfile.DIRTYPE, mode=0o755),
    member("src/", kind=tarfile.DIRTYPE, mode=0o755),
    member("src/app.py", b"print('hello')\n"),
    member("src/run.sh", b"#!/bin/sh\necho hi\n", mode=0o755),
    member("src/link.py", kind=tarfile.SYMTYPE, link="app.py"),
    member("src/copy.py", kind=tarfile.LNKTYPE, link="src/app.py"),
    member("deep/" + "d/" * 40 + "leaf.txt", b"deep\n"),
    member("README.md", b"# sample\n"),
])
# A long name (GNU or pax header) survives.
with tarfile.open(out / "longname.tar.gz", "w:gz", format=tarfile.PAX_FORMAT) as archive:
    data = b"long\n"
    info = tarfile.TarInfo("dir/" + "n" * 150 + ".txt")
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))

with zipfile.ZipFile(out / "good.zip", "w", zipfile.ZIP_DEFLATED) as archive:
    archive.writestr("src/app.py", "print('hello')\n" * 50)
    archive.writestr("src/empty/", "")
    archive.writestr(zipfile.ZipInfo("stored.txt"), "stored\n")
    link = zipfile.ZipInfo("src/link.py")
    link.create_system = 3
    link.external_attr = (0o120777 << 16)
    archive.writestr(link, "app.py")

# Malicious.
with zipfile.ZipFile(out / "zip-slip.zip", "w") as archive:
    archive.writestr("ok.txt", "fine\n")
    archive.writestr("../../evil-zip-slip.txt", "escaped\n")
tar("absolute.tar.gz", [member("/tmp/evil-absolute.txt", b"escaped\n")])
tar("dotdot.tar.gz", [member("a/../../evil-dotdot.txt", b"escaped\n")])
tar("symlink-escape.tar.gz", [
    member("etc", kind=tarfile.SYMTYPE, link="../../../../etc"),
])
tar("symlink-absolute.tar.gz", [member("passwd", kind=tarfile.SYMTYPE, link="/etc/passwd")])
# Each link looks inside on its own; followed through the first, the second climbs out.
tar("symlink-chain.tar.gz", [
    member("x/y/", kind=tarfile.DIRTYPE, mode=0o755),
    member("x/y/d", kind=tarfile.SYMTYPE, link="../.."),
    member("l", kind=tarfile.SYMTYPE, link="x/y/d/../.."),
])
# A symlink to a directory followed by a file "through" it.
tar("symlink-then-file.tar.gz", [
    member("out", kind=tarfile.SYMTYPE, link="/tmp"),
    member("out/evil-through-link.txt", b"escaped\n"),
])
tar("hardlink-escape.tar.gz", [member("h", kind=tarfile.LNKTYPE, link="../../../../etc/passwd")])
tar("device.tar.gz", [member("dev/null", kind=tarfile.CHRTYPE)])
tar("fifo.tar.gz", [member("pipe", kind=tarfile.FIFOTYPE)])
# Bombs: 64 MiB of zeros in a few tens of KiB (seconds of CPU to make: NO_BOMBS=1 skips them).
if not os.environ.get("NO_BOMBS"):
    with zipfile.ZipFile(out / "zip-bomb.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("zeros.bin", b"\0" * (64 << 20))
    with tarfile.open(out / "gzip-bomb.tar.gz", "w:gz", compresslevel=9) as archive:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 64 << 20
        archive.addfile(info, io.BytesIO(b"\0" * (64 << 20)))
# Many small files.
tar("many-files.tar.gz", [member(f"f/{i}.txt", b"x") for i in range(300)])
(out / "not-an-archive.bin").write_bytes(b"hello, this is text\n" * 40)

# Only symbolic links, each nested under the one before: a/l0 -> .., a/l0/l1 -> .., ... Made
# through path strings, each lands one directory higher than the last, up to "/".
nested = []
path = "a"
for i in range(16):
    path += f"/l{i}"
    nested.append(member(path, kind=tarfile.SYMTYPE, link=".."))
nested.append(member(path + "/" + escape_name, kind=tarfile.SYMTYPE, link="x"))
tar("nested-links.tar", nested, mode="w")
# A link that looks inside lexically but climbs out through another link: x/a -> .. (the
# root), then x/b -> a/../.. (lexically the root, really the root's parent).
tar("link-through-link.tar.gz", [
    member("x/", kind=tarfile.DIRTYPE, mode=0o755),
    member("x/a", kind=tarfile.SYMTYPE, link=".."),
    member("x/b", kind=tarfile.SYMTYPE, link="a/../.."),
])
# A directory entry and a file under a link made earlier.
tar("dir-under-link.tar.gz", [
    member("d", kind=tarfile.SYMTYPE, link="."),
    member("d/d/d/", kind=tarfile.DIRTYPE, mode=0o755),
])


def pax_archive(name, records):
    (out / name).write_bytes(pax_tar(records))


# Links that escape only together, then a damaged header: the archive is refused before the
# links are checked, and none may stay behind.
with open(out / "links-then-corrupt.tar", "wb") as handle:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, link in [("x/a", ".."), ("x/b", "a/../..")]:
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = link
            archive.addfile(info)
    data = buffer.getvalue().rstrip(b"\0")
    handle.write(data + b"\0" * ((512 - len(data) % 512) % 512) + b"garbage" * 73 + b"\0" * 1024)


# Unicode against Swift's Characters: "/" + a combining mark is one Character but two kernel
# components; a Prepend character before "/" likewise.
tar("combining-slash.tar.gz", [member("../\u0301evil-combining.txt", b"escaped\n")])
tar("prepend-slash.tar.gz", [
    member("d/", kind=tarfile.DIRTYPE, mode=0o755),
    member("d/up", kind=tarfile.SYMTYPE, link=".."),
    member("k\u0600", kind=tarfile.SYMTYPE, link="d/up/.."),
    member("k\u0600/evil-prepend.txt", b"escaped\n"),
])
# Canonically equal, byte-different names (NFC é and NFD e + U+0301) are different directories.
tar("nfc-nfd.tar.gz", [
    member("\u00e9/a/", kind=tarfile.DIRTYPE, mode=0o755),
    member("\u00e9/a/up", kind=tarfile.SYMTYPE, link="../.."),
    member("e\u0301/a/l", kind=tarfile.SYMTYPE, link="up/../.."),
    member("e\u0301/a/f.txt", b"nfd\n"),
])


# pax records whose length field lies: shorter than its own prefix, absurd, signed, no newline.
pax_archive("pax-short.tar", b"1 x")
pax_archive("pax-huge.tar", b"99999999999999999999999 path=x\n")
pax_archive("pax-signed.tar", b"-5 path=x\n")
pax_archive("pax-no-newline.tar", b"11 path=abcd")
print("ok")
