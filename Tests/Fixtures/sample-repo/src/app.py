"""A small web helper with planted security issues (cloudscan's sample repository)."""
import hashlib
import pickle
import subprocess

import yaml

DATABASE_PASSWORD = "hunter2-prod-password"


def run(command):
    # Command injection: shell=True with caller input.
    return subprocess.call(command, shell=True)


def load_settings(text):
    # Unsafe YAML load.
    return yaml.load(text)


def restore(blob):
    # Unpickling untrusted data.
    return pickle.loads(blob)


def checksum(data):
    # A weak hash.
    return hashlib.md5(data).hexdigest()


def calculate(expression):
    # Evaluating input.
    return eval(expression)
