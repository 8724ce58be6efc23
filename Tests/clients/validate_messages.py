"""Validates JSON messages against topology/schemas/<type>.json (draft 2020-12, formats checked).

usage: validate_messages.py SCHEMA_DIR FILE...   each FILE holds {"type": "<message type>", "body": {...}}
Prints one line per file, "ok <file>" or "invalid <file>: <reason>" ("not JSON" when the file does not
parse); exits 1 if any is invalid.
"""
import json
import pathlib
import sys

from jsonschema import Draft202012Validator, FormatChecker

schema_dir = pathlib.Path(sys.argv[1])
failed = False
for path in sys.argv[2:]:
    try:
        document = json.loads(pathlib.Path(path).read_text())
    except ValueError:
        failed = True
        print(f"invalid {path}: not JSON")
        continue
    schema = json.loads((schema_dir / f"{document['type']}.json").read_text())
    Draft202012Validator.check_schema(schema)
    errors = sorted(Draft202012Validator(schema, format_checker=FormatChecker()).iter_errors(document["body"]), key=str)
    if errors:
        failed = True
        print(f"invalid {path}: {errors[0].message[:300]}".replace("\n", " "))
    else:
        print(f"ok {path}")
sys.exit(1 if failed else 0)
