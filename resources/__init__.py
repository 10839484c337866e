"""The platform's resources and what they share. See ARCHITECTURE.md.

- Outside systems, one module each, with a local and an AWS implementation where AWS has a counterpart:
  `artifacts` (folder / S3), `postgres` (the embedded server, `embedded_postgres`, or a URL), `readonly`,
  `source_db` (the recommender's source; `classicmodels_demo` seeds its embedded stand-in), `stream` (files /
  Kinesis; `stream_record` is its record, light enough for the Lambda), `model_registry`, `notifier`,
  `sagemaker/`, `etl_engine` (in-process / Spark / Glue). With one implementation: `pgvector` (the
  embeddings tables; `vector_queries` and `item_index` are its query side), `tracking` (the training-run
  tables), `datasets` (the reference data folder).
- Helpers the resources and workflows share: `settings` (the only reader of the environment, which chooses
  the implementations), `credentials`, `aws_clients`, `artifact_keys`, `model_versions`, `metadata` (UI
  tables), `drift`.
- Dagster policies and wiring the workflow packages share: `freshness`, `schedules`, `lazy_definitions`.
"""
