"""The customers table and the audit trail of limit decisions, in the application PostgreSQL database.

`customers` is the bank's table (the source); this module knows its required columns, reads the eligible
rows, and writes decisions back in one transaction: COPY into a staging table, one `UPDATE ... FROM`
guarded against concurrent changes, and an append-only audit row per applied decision. Keyed by
`(batch_id, customer_id)`, the write-back is idempotent: applying the same batch again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

from credit_assets.model_code import scorecard
from resources.postgres import copy_dataframe, create_schema

DECISION_COLUMNS = [
    "customer_id",
    "current_score",
    "current_limit",
    "application_date",
    "limit_increase_decision",
    "new_limit",
    "decision_reason",
    "updated_at",
]
FEATURE_COLUMNS = [scorecard.column_for(f) for f in scorecard.FEATURES]
REQUIRED_COLUMNS = DECISION_COLUMNS + FEATURE_COLUMNS
AUDIT_TABLE = "credit_limit_audit"

_FEATURE_TYPES = {
    "application_score": "integer",
    "bureau_score": "integer",
    "loan_amount": "integer",
    "time_with_bank": "integer",
    "time_in_employment": "integer",
    "loan_to_income": "double precision",
    "gross_annual_income": "integer",
    "loan_payment_frequency": "text",
    "residential_status": "text",
    "cheque_card_flag": "text",
    "existing_customer_flag": "text",
    "home_telephone_number": "text",
}


class CustomerTableError(ValueError):
    """The customers table is absent or lacks columns; the message names table and columns."""


def table_identifier(name: str) -> sql.Composed:
    """`schema.table` or `table` as a safely quoted identifier."""
    parts = name.split(".")
    if len(parts) > 2 or not all(parts):
        raise ValueError(f"invalid table name {name!r}")
    return sql.Identifier(*parts)


def _schema_and_table(name: str) -> tuple[str, str]:
    schema, _, table = name.rpartition(".")
    return schema or "public", table


# --- schema ----------------------------------------------------------------------------------------------


def create_customers_table(cur: psycopg.Cursor, table: str = "customers") -> None:
    """The demo/test shape of the bank's customers table (fillfactor leaves room for in-place updates)."""
    feature_ddl = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_FEATURE_TYPES[c])) for c in FEATURE_COLUMNS
    )
    cur.execute(
        sql.SQL(
            """
            CREATE TABLE IF NOT EXISTS {} (
                customer_id bigint PRIMARY KEY,
                application_date date,
                current_score integer,
                current_limit integer,
                limit_increase_decision text,
                new_limit integer,
                decision_reason text,
                updated_at timestamptz,
                {}
            ) WITH (fillfactor = 80)
            """
        ).format(table_identifier(table), feature_ddl)
    )


_AUDIT_DDL = f"""
CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (
    batch_id uuid NOT NULL,
    customer_id bigint NOT NULL,
    old_score integer,
    new_score integer NOT NULL,
    old_limit integer NOT NULL,
    new_limit integer NOT NULL,
    decision text NOT NULL,
    reason text NOT NULL,
    probability double precision,
    model_version text NOT NULL,
    dagster_run_id uuid NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, customer_id)
);
CREATE INDEX IF NOT EXISTS {AUDIT_TABLE}_run ON {AUDIT_TABLE} (dagster_run_id);
CREATE OR REPLACE FUNCTION {AUDIT_TABLE}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{AUDIT_TABLE} is append-only (% refused)', TG_OP;
END $$;
CREATE OR REPLACE TRIGGER {AUDIT_TABLE}_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON {AUDIT_TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION {AUDIT_TABLE}_append_only();
"""


def ensure_audit_table(conn: psycopg.Connection) -> None:
    """Create the append-only audit table (UPDATE, DELETE and TRUNCATE rejected by a trigger; indexed by
    batch and by run) if it is not complete yet: in a transaction of its own, never inside a write-back."""
    was_idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    complete = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL "
        "AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = %s)",
        (AUDIT_TABLE, f"{AUDIT_TABLE}_run", f"{AUDIT_TABLE}_append_only"),
    ).fetchone()[0]
    if was_idle and not conn.autocommit:
        conn.commit()  # end the transaction the check opened; the caller's connection stays as it was
    if not complete:
        create_schema(conn, _AUDIT_DDL)


def load_customers(conn: psycopg.Connection, frame: pd.DataFrame, table: str = "customers", replace: bool = False) -> int:
    """Create the customers table if needed and COPY `frame` into it, in one transaction.

    With `replace`, existing rows are removed first (the audit trail is kept).
    """
    with conn.transaction(), conn.cursor() as cur:
        create_customers_table(cur, table)
        if replace:
            cur.execute(sql.SQL("TRUNCATE {}").format(table_identifier(table)))
        columns = [c for c in REQUIRED_COLUMNS if c in frame.columns]
        copy_dataframe(cur, table_identifier(table), frame, columns)
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.execute(sql.SQL("ANALYZE {}").format(table_identifier(table)))  # inside the caller's transaction
        return len(frame)
    # set hint bits and the visibility map once, so the first batch does not pay for it
    autocommit, conn.autocommit = conn.autocommit, True
    try:
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(table_identifier(table)))
    finally:
        conn.autocommit = autocommit
    return len(frame)


def count_customers(conn: psycopg.Connection, table: str = "customers") -> int | None:
    """Rows in the table, or None when it does not exist."""
    schema, name = _schema_and_table(table)
    exists = conn.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s", (schema, name)
    ).fetchone()
    if not exists:
        return None
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table_identifier(table))).fetchone()[0]


# --- reading the eligible set ----------------------------------------------------------------------------


def check_customers_columns(columns_present: set[str], table: str) -> None:
    if not columns_present:
        raise CustomerTableError(
            f"table {table} does not exist or is not readable by the read-only role; load demo data with "
            "`mldp seed-customers` or point DATABASE_URL / READONLY_DATABASE_URL at the bank's database"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in columns_present]
    if missing:
        raise CustomerTableError(f"table {table} is missing column(s): {', '.join(missing)}")


def columns_query(table: str) -> tuple[str, tuple[str, str]]:
    schema, name = _schema_and_table(table)
    return (
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
        (schema, name),
    )


def eligible_query(table: str, min_current_score: int, max_current_limit: int) -> tuple[sql.Composed, dict]:
    """Customers without a decision whose score and limit qualify; NULL limits are included to be reported."""
    columns = ["customer_id", "application_date", "current_score", "current_limit", *FEATURE_COLUMNS]
    statement = sql.SQL(
        "SELECT {} FROM {} WHERE current_score >= %(min_score)s "
        "AND (current_limit IS NULL OR current_limit < %(max_limit)s) "
        "AND limit_increase_decision IS NULL ORDER BY customer_id"
    ).format(sql.SQL(", ").join(map(sql.Identifier, columns)), table_identifier(table))
    return statement, {"min_score": min_current_score, "max_limit": max_current_limit}


# Plausible values per column, inclusive. A row outside them is not scored: it is skipped with its reason,
# counted in the batch's metadata and kept in `eligibility_skipped.parquet`. Defaults are wide: the public
# bank data set lies well inside them (scores 555-1085, amounts and incomes up to 900,000, times up to 6,100,
# loan-to-income up to 11,603). Run config (`EligibilityConfig.plausible_ranges`) overrides any of them.
PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {
    "current_score": (0, 2_000),
    "current_limit": (0, 10_000_000),
    "application_score": (0, 2_000),
    "bureau_score": (0, 2_000),
    "loan_amount": (0, 10_000_000),
    "time_with_bank": (0, 10_000),
    "time_in_employment": (0, 10_000),
    "loan_to_income": (0, 100_000),
    "gross_annual_income": (0, 100_000_000),
}
# The data set's own codes for "not applicable" (loan-to-income without an income): the model knows them as
# missing values, so they are not implausible.
NOT_APPLICABLE_CODES: dict[str, frozenset[float]] = {"loan_to_income": frozenset({-9_999_997.0, -9_999_998.0})}


def plausible_ranges(overrides: dict[str, list[float]] | None = None) -> dict[str, tuple[float, float]]:
    """The default ranges with `overrides` applied; a clear error for an unknown column or a bad range."""
    ranges = dict(PLAUSIBLE_RANGES)
    for column, bounds in (overrides or {}).items():
        if column not in PLAUSIBLE_RANGES:
            raise ValueError(f"plausible_ranges: unknown column {column!r}; known: {', '.join(PLAUSIBLE_RANGES)}")
        if len(bounds) != 2 or not all(np.isfinite(bounds)) or bounds[0] > bounds[1]:
            raise ValueError(f"plausible_ranges.{column} must be [minimum, maximum] with minimum <= maximum, "
                             f"not {list(bounds)!r}")
        ranges[column] = (float(bounds[0]), float(bounds[1]))
    return ranges


def split_implausible_rows(frame: pd.DataFrame, ranges: dict[str, tuple[float, float]] | None = None
                           ) -> tuple[pd.DataFrame, dict[str, int], pd.DataFrame]:
    """(rows fit to score, skip counts by reason, the skipped rows with their reason).

    A row is skipped for its first problem, column by column: a numeric value that is missing (NULL, or
    NaN in a floating-point column), infinite, or outside its plausible range; a negative limit is named as
    such. Categorical features may be missing: the model knows that value.
    """
    ranges = PLAUSIBLE_RANGES if ranges is None else ranges
    reasons = pd.Series(pd.NA, index=frame.index, dtype="string")

    def flag(mask, reason: str) -> None:
        reasons[np.asarray(mask) & reasons.isna().to_numpy()] = reason

    for column, (low, high) in ranges.items():
        values = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        codes = values.isin(NOT_APPLICABLE_CODES.get(column, ()))
        flag(values.isna(), f"{column} is NULL" if column == "current_limit" else f"{column} is missing")
        flag(np.isinf(values), f"{column} is infinite")
        if column == "current_limit":
            flag(values < 0, "current_limit is negative")
        flag(~codes & ((values < low) | (values > high)), f"{column} outside [{low:,.0f}, {high:,.0f}]")
    skipped = frame.loc[reasons.notna(), ["customer_id", "current_score", "current_limit"]].assign(
        reason=reasons[reasons.notna()])
    counts = {str(k): int(v) for k, v in reasons.value_counts().items()}
    valid = frame.loc[reasons.isna()].copy()
    valid["current_limit"] = valid["current_limit"].astype("int64")
    valid["current_score"] = valid["current_score"].astype("int64")
    return valid, counts, skipped.reset_index(drop=True)


# --- writing decisions back ------------------------------------------------------------------------------

_STAGING_COLUMNS = [
    "customer_id", "current_score", "new_score", "current_limit", "new_limit", "decision", "reason", "probability",
]


@dataclass(frozen=True)
class WriteBackResult:
    batch_id: str
    decisions: int
    updated: int
    already_applied: int
    conflicts: int
    missing_customers: int

    def as_dict(self) -> dict[str, int | str]:
        return {
            "batch_id": self.batch_id,
            "decisions": self.decisions,
            "updated": self.updated,
            "already_applied": self.already_applied,
            "conflicts": self.conflicts,
            "missing_customers": self.missing_customers,
        }


class DecisionBatchError(ValueError):
    """A batch of decisions cannot be written as it is; nothing was written."""


def apply_decisions(
    conn: psycopg.Connection,
    decisions: pd.DataFrame,
    *,
    batch_id: str,
    model_version: str,
    run_id: str,
    table: str = "customers",
) -> WriteBackResult:
    """Write a batch of decisions to `table` and the audit trail atomically and idempotently.

    A customer is updated only if it is still undecided and its score and limit are those the decision was
    based on; otherwise it counts as a conflict (changed since it was read) or, when this batch already
    decided it, as already applied. Every updated customer gets exactly one audit row, inserted by the same
    statement that updates it.
    """
    repeated = decisions["customer_id"][decisions["customer_id"].duplicated()]
    if not repeated.empty:
        raise DecisionBatchError(
            f"batch {batch_id} decides {repeated.nunique()} customer(s) more than once (e.g. customer "
            f"{int(repeated.iloc[0])}); nothing was written"
        )
    target = table_identifier(table)
    ensure_audit_table(conn)
    with conn.transaction(), conn.cursor() as cur:
        # Write-backs take turns (two batches deciding the same customers cannot deadlock). A table lock that
        # needs a write privilege, so no read-only session can hold it; readers of the audit are not blocked.
        cur.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.Identifier(AUDIT_TABLE)))
        cur.execute(
            """
            CREATE TEMP TABLE credit_decision_staging (
                customer_id bigint NOT NULL, current_score integer, new_score integer NOT NULL,
                current_limit integer NOT NULL, new_limit integer NOT NULL, decision text NOT NULL,
                reason text NOT NULL, probability double precision
            ) ON COMMIT DROP
            """
        )
        copy_dataframe(cur, sql.Identifier("credit_decision_staging"), decisions, _STAGING_COLUMNS)
        cur.execute("ANALYZE credit_decision_staging")
        cur.execute(
            sql.SQL(
                """
                WITH applied AS (
                    UPDATE {target} AS c
                    SET current_score = s.new_score,
                        limit_increase_decision = s.decision,
                        new_limit = s.new_limit,
                        decision_reason = s.reason,
                        updated_at = now()
                    FROM credit_decision_staging AS s
                    WHERE c.customer_id = s.customer_id
                      AND c.limit_increase_decision IS NULL
                      AND c.current_limit IS NOT DISTINCT FROM s.current_limit
                      AND c.current_score IS NOT DISTINCT FROM s.current_score
                      AND NOT EXISTS (
                          SELECT 1 FROM {audit} AS a WHERE a.batch_id = %(batch)s AND a.customer_id = s.customer_id)
                    RETURNING s.customer_id, s.current_score, s.new_score, s.current_limit, s.new_limit, s.decision,
                              s.reason, s.probability
                )
                INSERT INTO {audit} (batch_id, customer_id, old_score, new_score, old_limit, new_limit, decision,
                                     reason, probability, model_version, dagster_run_id)
                SELECT %(batch)s, customer_id, current_score, new_score, current_limit, new_limit, decision, reason,
                       probability, %(model)s, %(run)s
                FROM applied
                """
            ).format(target=target, audit=sql.Identifier(AUDIT_TABLE)),
            {"batch": batch_id, "model": model_version, "run": run_id},
        )
        updated = cur.rowcount
        missing = in_batch = 0
        if updated != len(decisions):  # only then is there anything else to account for
            missing, in_batch = cur.execute(
                sql.SQL(
                    """
                    SELECT count(*) FILTER (WHERE NOT EXISTS (
                               SELECT 1 FROM {target} c WHERE c.customer_id = s.customer_id)),
                           count(*) FILTER (WHERE EXISTS (
                               SELECT 1 FROM {audit} a WHERE a.batch_id = %(batch)s AND a.customer_id = s.customer_id))
                    FROM credit_decision_staging AS s
                    """
                ).format(target=target, audit=sql.Identifier(AUDIT_TABLE)),
                {"batch": batch_id},
            ).fetchone()
            if in_batch > updated:
                _refuse_changed_decisions(cur, batch_id, model_version)
        else:
            in_batch = updated
    decided = len(decisions)
    return WriteBackResult(
        batch_id=batch_id,
        decisions=decided,
        updated=updated,
        already_applied=in_batch - updated,
        conflicts=decided - in_batch - missing,
        missing_customers=missing,
    )


def _refuse_changed_decisions(cur: psycopg.Cursor, batch_id: str, model_version: str) -> None:
    """A batch is written back once: decisions that differ from what its audit already holds are refused
    (the transaction then rolls back) instead of being counted as applied."""
    changed = cur.execute(
        sql.SQL(
            """
            SELECT s.customer_id, a.decision, a.new_limit, a.model_version, s.decision, s.new_limit, count(*) OVER ()
            FROM credit_decision_staging AS s JOIN {audit} AS a ON a.batch_id = %(batch)s AND a.customer_id = s.customer_id
            WHERE (a.decision, a.new_limit, a.new_score, a.model_version)
                  IS DISTINCT FROM (s.decision, s.new_limit, s.new_score, %(model)s)
            ORDER BY s.customer_id LIMIT 1
            """
        ).format(audit=sql.Identifier(AUDIT_TABLE)),
        {"batch": batch_id, "model": model_version},
    ).fetchone()
    if changed:
        customer, old_decision, old_limit, old_model, new_decision, new_limit, count = changed
        raise DecisionBatchError(
            f"batch {batch_id} was already written back with other decisions for {count} customer(s) (e.g. "
            f"customer {customer}: {old_decision} {old_limit} by model {old_model}, now {new_decision} {new_limit} "
            f"by model {model_version}); nothing was written. Materialize eligible_customers to start a new batch."
        )
