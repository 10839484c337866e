"""Where the online paths (the Firehose Lambda, the recommendations API) read the live model from: read-only
database connections for the embeddings tables, and each model version's user tower from `ARTIFACTS_URI`.

Light on purpose (no Dagster, pandas or torch), so the Lambda's package stays small and the API starts fast.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from recsys_assets.enrichment import TowerEmbedder, load_user_tower
from recsys_assets.model_code.numpy_tower import MAX_FILE_BYTES
from resources.artifact_keys import join_key, read_artifact, version_prefix
from resources.credentials import connect_or_explain, credentials_from_secret
from resources.settings import ConfigurationError, PlatformSettings

CONNECT_TIMEOUT_SECONDS = 10
EMBEDDED_DATABASE = "mldp"  # the application database's name in the embedded server (resources.postgres)


def query_connector(settings: PlatformSettings, *, embedded_fallback: bool = False) -> Callable[[], psycopg.Connection]:
    """How an online path opens a database connection: the read-only user of `READONLY_DATABASE_SECRET_ID` (the
    deployed form), else `READONLY_DATABASE_URL`, else `DATABASE_URL`; else, with `embedded_fallback`, the
    embedded server (a laptop). Statements time out after `READONLY_STATEMENT_TIMEOUT_SECONDS`; the callers
    make every session read-only."""
    options = f"-c statement_timeout={settings.readonly_statement_timeout_seconds * 1000}"
    timeout = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    if settings.readonly_secret_id:
        from resources.aws_clients import aws_client

        secret_id = settings.readonly_secret_id
        client = aws_client("secretsmanager", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url)
        credentials = credentials_from_secret(secret_id, client.get_secret_value(SecretId=secret_id).get("SecretString"))
        describe = f"the database in Secrets Manager secret {secret_id!r}"
        return lambda: connect_or_explain(describe=describe, autocommit=True, options=options, **timeout,
                                          **credentials)
    for name, url in (("READONLY_DATABASE_URL", settings.readonly_database_url), ("DATABASE_URL", settings.database_url)):
        if url:
            return lambda: connect_or_explain(url, describe=f"given by {name}", autocommit=True, options=options,
                                              **timeout)
    if embedded_fallback:
        from resources.embedded_postgres import embedded_server

        folder = settings.embedded_postgres_dir

        def embedded() -> psycopg.Connection:
            uri = embedded_server(folder).get_uri().replace("/postgres?", f"/{EMBEDDED_DATABASE}?", 1)
            return connect_or_explain(uri, describe=f"the embedded server in {folder}", autocommit=True,
                                      options=options, **timeout)

        return embedded
    raise ConfigurationError("reading the live embeddings needs READONLY_DATABASE_SECRET_ID, READONLY_DATABASE_URL "
                             "or DATABASE_URL: the database holding the live embeddings tables")


class ArtifactTowers:
    """Each model version's user tower in numpy, read from `ARTIFACTS_URI` once per process."""

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings
        self._s3 = None
        if settings.artifacts_uri.startswith("s3://"):
            from resources.aws_clients import aws_client

            self._s3 = aws_client("s3", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url)
        self._embedders: dict[str, TowerEmbedder] = {}

    def embedder(self, version: str) -> TowerEmbedder:
        if version not in self._embedders:
            settings, prefix = self.settings, version_prefix(version)

            def read(name: str) -> bytes:
                return read_artifact(settings.artifacts_uri, join_key(prefix, name), region_name=settings.aws_region,
                                     endpoint_url=settings.aws_endpoint_url, client=self._s3,
                                     max_bytes=MAX_FILE_BYTES)

            where = f"{settings.artifacts_uri.rstrip('/')}/{prefix}"
            self._embedders[version] = TowerEmbedder(load_user_tower(read, version, where), version)
        return self._embedders[version]
