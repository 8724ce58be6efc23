"""Tar records by hand, for what tarfile will not write (damaged pax records). Shared by
make_archives.py (the extraction tests) and Fuzz/make_seeds.py (the fuzz seeds)."""


def raw_header(name, typeflag, size):
    """A ustar header with a correct checksum."""
    header = bytearray(512)
    header[0:len(name)] = name
    header[100:108] = b"0000644\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"%011o\0" % 0
    header[156] = ord(typeflag)
    header[257:263] = b"ustar\0"
    header[263:265] = b"00"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def pax_tar(records):
    """A tar of one pax extended header holding `records` (as given), then an empty file f."""
    padding = b"\0" * ((512 - len(records) % 512) % 512)
    body = raw_header(b"PaxHeader/f", "x", len(records)) + records + padding
    return body + raw_header(b"f", "0", 0) + b"\0" * 1024
