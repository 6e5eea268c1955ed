"""A real S3 server on loopback: moto's standalone server, which speaks S3's REST API and, past its first
unauthenticated calls, checks the signature of every request against the IAM users it holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.testing import free_port
from tests.support.servers import stop_process, wait_until_answering

# The calls that create the test's IAM user, its key and its policy; every call after them is signed.
_SETUP_CALLS = 3


@dataclass
class S3Server:
    process: subprocess.Popen
    port: int
    access_key: str
    secret_key: str

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")  # fmt: skip

    def upload_folder(self, folder: Path, bucket: str, prefix: str) -> None:
        client = self.client()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")

    def delete_prefix(self, bucket: str, prefix: str) -> None:
        client = self.client()
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        for obj in listed:
            client.delete_object(Bucket=bucket, Key=obj["Key"])

    def environ(self, **overrides: str) -> dict[str, str]:
        """The gateway's environment, as a user points OVMS at such a server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "S3_ENDPOINT"}
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key, AWS_REGION="us-east-1"
        )
        env.update(overrides)
        return env

    def stop(self) -> None:
        stop_process(self.process)


def start_s3_server() -> S3Server:
    try:
        import boto3
        import moto  # noqa: F401
    except ImportError as e:
        pytest.skip(f"moto's server is not installed here (make install-test installs it): {e}")
    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(_SETUP_CALLS))
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_until_answering(process, f"http://127.0.0.1:{port}/moto-api/", "moto's S3 server")
    iam = boto3.client("iam", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="setup",
                       aws_secret_access_key="setup", region_name="us-east-1")  # fmt: skip
    iam.create_user(UserName="ovgw")
    key = iam.create_access_key(UserName="ovgw")["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="ovgw", PolicyName="all", PolicyDocument=json.dumps(policy))
    return S3Server(process, port, key["AccessKeyId"], key["SecretAccessKey"])
