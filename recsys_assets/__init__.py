"""Recommender: ratings training data, the two-tower model, pgvector embeddings and streaming enrichment."""

from __future__ import annotations

import dagster as dg

defs = dg.Definitions()
