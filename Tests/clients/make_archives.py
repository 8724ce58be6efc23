"""Writes the archives the runner's extraction tests use, good and malicious, into DIR.

usage: make_archives.py DIR
"""
import io
import sys
import tarfile
import zipfile
from pathlib import Path

out = Path(sys.argv[1])
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
# Bombs: 64 MiB of zeros in a few tens of KiB.
with zipfile.ZipFile(out / "zip-bomb.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
    archive.writestr("zeros.bin", b"\0" * (64 << 20))
with tarfile.open(out / "gzip-bomb.tar.gz", "w:gz", compresslevel=9) as archive:
    info = tarfile.TarInfo("zeros.bin")
    info.size = 64 << 20
    archive.addfile(info, io.BytesIO(b"\0" * (64 << 20)))
# Many small files.
tar("many-files.tar.gz", [member(f"f/{i}.txt", b"x") for i in range(300)])
(out / "not-an-archive.bin").write_bytes(b"hello, this is text\n" * 40)
print("ok")
