"""A real S3-compatible server for the shared-storage tests: moto in server mode (installed
from PyPI by `make test` with the dev extra), on 127.0.0.1, in a session of its own.

It starts open, which is how the tests create an IAM user with an access key and the
bucket; then it is switched to checking every request's signature against that user,
as AWS does, so a missing or wrong key is refused like a real server refuses it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import requests
from reliability_support import Processes, clean_env, free_port, wait_for

REGION = "us-east-1"
# The key that creates the user: accepted only while the server is still open.
BOOTSTRAP = {"AWS_ACCESS_KEY_ID": "bootstrap", "AWS_SECRET_ACCESS_KEY": "bootstrap"}


class S3Server:
    def __init__(self, processes: Processes, root: Path, bucket: str = "studies"):
        self.processes = processes
        self.root = root
        self.bucket = bucket
        self.port = free_port()
        self.credentials: dict[str, str] = {}
        root.mkdir(parents=True, exist_ok=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def uri(self, prefix: str) -> str:
        """`--storage` for `prefix` in the bucket, the endpoint in pyarrow's URI options."""
        return f"s3://{self.bucket}/{prefix}?endpoint_override=127.0.0.1:{self.port}&scheme=http"

    @property
    def env(self) -> dict[str, str]:
        """What every process that reads or writes the bucket needs in its environment."""
        return {**self.credentials, "AWS_DEFAULT_REGION": REGION}

    def start(self) -> None:
        args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.processes.start(args, self.root, self.root / "moto.log", clean_env())
        wait_for(self._healthy, 60, f"moto on port {self.port} ({self.log_tail()})")
        iam = self._client("iam", BOOTSTRAP)
        iam.create_user(UserName="studies")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="studies", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="studies")["AccessKey"]
        self.credentials = {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
        self.s3().create_bucket(Bucket=self.bucket)
        # From here on every request must be signed by a key the server knows.
        requests.post(
            f"{self.endpoint}/moto-api/reset-auth", data=b"0", timeout=10
        ).raise_for_status()

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.endpoint}/moto-api/", timeout=2).status_code < 500
        except requests.RequestException:
            return False

    def _client(self, service: str, credentials: dict[str, str]):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        )

    def s3(self):
        return self._client("s3", self.credentials or BOOTSTRAP)

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under `prefix` in the bucket."""
        pages = (
            self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def read(self, key: str) -> bytes:
        return self.s3().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def log_tail(self) -> str:
        try:
            return (self.root / "moto.log").read_text()[-1500:]
        except OSError:
            return ""


class SharedServices:
    """What a cluster's studies share: the bucket, and a tracking server whose artifact
    store is that bucket (boto3 in the server reads the endpoint from
    MLFLOW_S3_ENDPOINT_URL; drivers upload artifacts through the server's proxy)."""

    def __init__(self, processes: Processes, root: Path):
        from reliability_support import MlflowServer

        self.s3 = S3Server(processes, root / "s3")
        self.s3.start()
        self.tracking = MlflowServer(
            processes,
            root / "mlflow",
            artifacts=f"s3://{self.s3.bucket}/mlartifacts",
            env={**self.s3.env, "MLFLOW_S3_ENDPOINT_URL": self.s3.endpoint},
        )
        self.tracking.start()

    @property
    def env(self) -> dict[str, str]:
        """The credentials every driver and Ray node needs."""
        return self.s3.env


class ClusterDatabases:
    """The databases a cluster's drivers share, on one real PostgreSQL server: a tracking
    server whose backend store is database `mlflow` (artifacts in the shared bucket), and
    database `optuna` for the samplers' studies."""

    def __init__(self, processes: Processes, root: Path, shared: SharedServices):
        from postgres_support import PostgresServer
        from reliability_support import MlflowServer

        self.postgres = PostgresServer()
        self.artifacts_prefix = "mlartifacts-postgres"  # in the shared bucket
        try:
            self.postgres.start()
            self.optuna_url = self.postgres.create_database("optuna")
            self.tracking = MlflowServer(
                processes,
                root / "mlflow",
                artifacts=f"s3://{shared.s3.bucket}/{self.artifacts_prefix}",
                env={**shared.s3.env, "MLFLOW_S3_ENDPOINT_URL": shared.s3.endpoint},
                backend=self.postgres.create_database("mlflow"),
            )
            self.tracking.start(timeout=180)  # MLflow creates its tables in a fresh database
        except BaseException:
            self.postgres.stop()
            raise

    def stop(self) -> None:
        self.postgres.stop()
