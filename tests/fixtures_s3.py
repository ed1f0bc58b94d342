"""A real S3-compatible server on 127.0.0.1 (moto in server mode) for the whole test session.

`s3_server` starts it on a free loopback port, creates a bucket, and points the standard AWS
environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) at it for the session, as a user of s3fs
would; `.env` holds the same variables for subprocesses and Ray nodes. Everything is restored
when the session ends.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

import pytest

BUCKET = "synrank-test"


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    env: dict[str, str] = field(default_factory=dict)

    def url(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix.strip('/')}".rstrip("/")

    def fresh_url(self, name: str = "t") -> str:
        """A prefix no other test uses."""
        return self.url(f"{name}-{uuid.uuid4().hex[:10]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "synrank-test",
        "AWS_SECRET_ACCESS_KEY": "synrank-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        yield S3Server(endpoint, BUCKET, dict(env))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
