"""The platform's resources: one module per outside system (artifacts, databases, stream, registry, notifier,
SageMaker, the ETL engine), each with a local and an AWS implementation, and the few helpers they share
(`settings`, the only reader of the environment, which chooses the implementations; `credentials`,
`aws_clients`, `artifact_keys`, `metadata`, `drift`, `freshness`, `schedules`, `item_index`, `vector_queries`,
`model_versions`). See ARCHITECTURE.md."""
