"""The pgvector resource: staging-and-swap loads, rollback, retention, and nearest-neighbour queries checked
against exact numpy search."""

import threading
import time

import numpy as np
import psycopg
import pytest

from recsys_assets.embeddings import EmbeddingRows
from resources.pgvector import (
    EmbeddingsBusyError,
    EmbeddingsLoadError,
    EmbeddingsMismatchError,
    EmbeddingsVersionChanged,
    PgVectorStore,
    UnknownItemError,
    encode_copy_binary,
)


def item_rows(n, dim=32, seed=0, prefix="S"):
    ids = np.array([f"{prefix}{i:05d}" for i in range(n)], dtype=object)
    return EmbeddingRows(ids, np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32), "test")


def exact_neighbours(rows, query, k, exclude=()):
    unit = rows.vectors / np.linalg.norm(rows.vectors, axis=1, keepdims=True)
    distance = 1 - unit @ (query / np.linalg.norm(query))
    order = [i for i in np.argsort(distance, kind="stable") if rows.ids[i] not in set(exclude)]
    return [(rows.ids[i], float(distance[i])) for i in order[:k]]


@pytest.fixture(scope="module")
def store(app_db):
    store = PgVectorStore(db=app_db, exact_scan_below=500, retention=1)
    yield store
    store.close()


def count(store, table):
    return store.connection().execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_binary_copy_encoding_round_trips(store):
    rows = item_rows(3, dim=4)
    users = EmbeddingRows(np.array([103, 112], dtype=np.int64), rows.vectors[:2], "u")
    assert encode_copy_binary(users.ids, users.vectors, True).startswith(b"PGCOPY\n\xff\r\n\x00")
    store.load_embeddings("enc_items", rows, 4, version="v1")
    store.load_embeddings("enc_users", users, 4, version="v1")
    conn = store.connection()
    got = dict(conn.execute("SELECT id, embedding FROM enc_items").fetchall())
    assert np.allclose(got["S00001"].to_numpy(), rows.vectors[1])
    assert conn.execute("SELECT pg_typeof(id)::text FROM enc_users LIMIT 1").fetchone()[0] == "integer"
    assert sorted(r[0] for r in conn.execute("SELECT id FROM enc_users").fetchall()) == [103, 112]


def test_swap_keeps_previous_versions_for_rollback_and_applies_retention(store):
    first, second, third = item_rows(50, seed=1), item_rows(60, seed=2), item_rows(70, seed=3)
    store.load_embeddings("swap_emb", first, 32, version="v1")
    report = store.load_embeddings("swap_emb", second, 32, version="v2")
    assert (report.previous_version, report.rows, count(store, "swap_emb")) == ("v1", 60, 60)
    again = store.load_embeddings("swap_emb", second, 32, version="v2")
    assert again.skipped  # the same version twice changes nothing
    v1_table = store.versions("swap_emb")[-1]["physical_table"]
    report = store.load_embeddings("swap_emb", third, 32, version="v3")
    assert report.dropped_tables == [v1_table]  # retention 1: only v2 is kept besides v3
    assert store.rollback("swap_emb") == "v2"
    assert count(store, "swap_emb") == 60 and store.active_version("swap_emb") == "v2"
    statuses = {v["version"]: v["status"] for v in store.versions("swap_emb")}
    assert statuses == {"v2": "active", "v3": "previous", "v1": "dropped"}
    index = store.connection().execute(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'swap_emb' AND indexdef LIKE '%hnsw%'").fetchone()[0]
    assert "vector_cosine_ops" in index


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: EmbeddingRows(r.ids, r.vectors[:, :16], r.source), "dimension 16, expected 32"),
        (lambda r: EmbeddingRows(r.ids, np.where(np.arange(32) == 3, np.nan, r.vectors).astype(np.float32), r.source),
         "NaN or infinity"),
        (lambda r: EmbeddingRows(np.concatenate([r.ids[:-1], r.ids[:1]]), r.vectors, r.source),
         r"1 duplicate ids \(e.g. 'S00000'\)"),
    ],
)
def test_bad_loads_leave_the_live_table_untouched(store, mutate, message):
    good = item_rows(40, seed=4)
    store.load_embeddings("guarded_emb", good, 32, version="good")
    with pytest.raises(EmbeddingsLoadError, match=message):
        store.load_embeddings("guarded_emb", mutate(item_rows(40, seed=5)), 32, version="bad")
    with pytest.raises(EmbeddingsLoadError, match="40 rows, expected 41"):
        store.load_embeddings("guarded_emb", item_rows(40, seed=5), 32, version="short", expected_rows=41)
    assert store.active_version("guarded_emb") == "good" and count(store, "guarded_emb") == 40
    tables = store.connection().execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'guarded_emb%'").fetchone()[0]
    assert tables == 1  # failed staging tables are dropped
    big_ids = EmbeddingRows(np.array([1, 2**31 + 5]), item_rows(2, seed=1).vectors, "users.csv")
    with pytest.raises(EmbeddingsLoadError, match=r"id 2147483653 does not fit the table's integer id column"):
        store.load_embeddings("guarded_users", big_ids, 32, version="v1")


def test_reloading_a_version_replaces_it_and_keeps_the_rollback_copy(store):
    first, second = item_rows(30, seed=31), item_rows(35, seed=32)
    store.load_embeddings("reload_emb", first, 32, version="a")
    store.load_embeddings("reload_emb", second, 32, version="b")
    fixed_b = item_rows(36, seed=33)  # version b republished with other content: loaded again
    report = store.load_embeddings("reload_emb", fixed_b, 32, version="b")
    assert not report.skipped and count(store, "reload_emb") == 36
    assert store.rollback("reload_emb") == "a" and count(store, "reload_emb") == 30  # a's copy survived
    store.load_embeddings("reload_emb", fixed_b, 32, version="b")  # a previous version loaded again
    assert count(store, "reload_emb") == 36 and store.active_version("reload_emb") == "b"
    registered = {v["physical_table"] for v in store.versions("reload_emb") if v["status"] != "dropped"}
    present = {r[0] for r in store.connection().execute(
        "SELECT tablename FROM pg_tables WHERE tablename LIKE 'reload_emb__%'").fetchall()}
    assert present == registered - {store.versions("reload_emb")[0]["physical_table"]}  # no orphaned tables


def test_readers_never_see_an_empty_or_partial_table(store):
    store.load_embeddings("live_emb", item_rows(3000, seed=6), 32, version="r0")
    seen, errors, stop = [], [], threading.Event()

    def reader():
        with store.db.connect(autocommit=True) as conn:
            while not stop.is_set():
                try:
                    seen.append(conn.execute("SELECT count(*) FROM live_emb").fetchone()[0])
                except psycopg.Error as exc:  # pragma: no cover - reported below
                    errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i, n in enumerate((4000, 3500, 5000), start=1):
            store.load_embeddings("live_emb", item_rows(n, seed=10 + i), 32, version=f"r{i}")
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert set(seen) <= {3000, 4000, 3500, 5000} and len(seen) > 10


@pytest.fixture(scope="module")
def catalogue(store):
    """2,000 items through HNSW (above exact_scan_below) and 200 scanned exactly."""
    large, small = item_rows(2000, seed=21), item_rows(200, seed=22, prefix="P")
    store.load_embeddings("item_emb", large, 32, version="big")
    small_store = store.model_copy(update={"item_table": "small_emb"})
    small_store.load_embeddings("small_emb", small, 32, version="small")
    yield store, large, small_store, small
    small_store.close()


def recall(got, expected):
    return len({g[0] for g in got} & {e[0] for e in expected}) / len(expected)


def test_similar_items_exclude_the_item_and_match_exact_search(catalogue):
    store, large, small_store, small = catalogue
    recalls = []
    for i in range(0, 2000, 100):
        got = store.similar_items(large.ids[i], 10)
        assert len(got) == 10 and large.ids[i] not in {g[0] for g in got}
        assert [d for _, d in got] == sorted(d for _, d in got)
        recalls.append(recall(got, exact_neighbours(large, large.vectors[i], 10, exclude=[large.ids[i]])))
    assert np.mean(recalls) >= 0.95
    exact = small_store.similar_items(small.ids[7], 5)  # small catalogue: exact scan, exact answer
    expected = exact_neighbours(small, small.vectors[7], 5, exclude=[small.ids[7]])
    assert [g[0] for g in exact] == [e[0] for e in expected]
    assert np.allclose([g[1] for g in exact], [e[1] for e in expected], atol=1e-5)
    with pytest.raises(UnknownItemError):
        store.similar_items("nope", 5)


def test_recommendations_with_exclusions_return_k_rows(catalogue):
    store, large, small_store, small = catalogue
    query = large.vectors[5] + 0.1
    best = exact_neighbours(large, query, 60)
    excluded = [identifier for identifier, _ in best[:50]]  # the 50 nearest items are off limits
    got = store.recommend_for_embedding(query, 5, exclude_ids=excluded)
    assert len(got) == 5 and not {g[0] for g in got} & set(excluded)
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
    assert recall(got, best[50:55]) >= 0.8
    all_but_three = list(small.ids[3:])
    left = small_store.recommend_for_embedding(small.vectors[0], 5, exclude_ids=all_but_three)
    expected = exact_neighbours(small, small.vectors[0], 5, exclude=all_but_three)
    assert len(left) == 3 and [g[0] for g in left] == [e[0] for e in expected]  # 3 items left: 3 rows, not 5


def test_batched_queries_answer_like_single_ones(catalogue):
    store, large, _small_store, _small = catalogue
    codes = list(large.ids[:20]) + ["missing"]
    batch = store.similar_items_batch(codes, 5)
    assert batch[-1] is None
    for code, answer in zip(codes[:20], batch[:20]):
        assert [a[0] for a in answer] == [s[0] for s in store.similar_items(code, 5)]
    vectors = large.vectors[:10]
    excludes = [[large.ids[i]] for i in range(10)]
    batched = store.recommend_batch(vectors, 5, excludes)
    for i in range(10):
        assert batched[i] == store.recommend_for_embedding(vectors[i], 5, excludes[i])
        assert large.ids[i] not in {b[0] for b in batched[i]}


def test_vector_type_is_registered_once_per_connection(store):
    conn = store.connection()
    assert store.connection() is conn
    value = conn.execute("SELECT '[1,2]'::vector").fetchone()[0]
    assert value.to_list() == [1.0, 2.0]
    assert conn.execute("SHOW hnsw.iterative_scan").fetchone()[0] == "strict_order"
    started = time.perf_counter()
    store.close()
    assert store.connection() is not conn and time.perf_counter() - started < 5


def pair(n_items, n_users, seed):
    items = item_rows(n_items, seed=seed)
    users = EmbeddingRows(np.arange(1, n_users + 1, dtype=np.int64), item_rows(n_users, seed=seed + 1).vectors, "u")
    return {"pair_items": items, "pair_users": users}


def corrupt_items(rows):
    return {**rows, "pair_items": EmbeddingRows(rows["pair_items"].ids, np.full_like(rows["pair_items"].vectors, np.nan),
                                                "items")}


def corrupt_users(rows):
    ids = rows["pair_users"].ids.copy()
    ids[-1] = ids[0]
    return {**rows, "pair_users": EmbeddingRows(ids, rows["pair_users"].vectors, "users")}


def short_users(rows):
    return {**rows, "pair_users": EmbeddingRows(rows["pair_users"].ids[:-1], rows["pair_users"].vectors[:-1], "users")}


def wide_items(rows):
    items = rows["pair_items"]
    return {**rows, "pair_items": EmbeddingRows(items.ids, np.hstack([items.vectors, items.vectors[:, :1]]), "items")}


def huge_user_id(rows):
    ids = rows["pair_users"].ids.copy()
    ids[0] = 2**40
    return {**rows, "pair_users": EmbeddingRows(ids, rows["pair_users"].vectors, "users")}


@pytest.mark.parametrize("corrupt", [corrupt_items, corrupt_users, short_users, wide_items, huge_user_id])
def test_the_tables_of_a_version_go_live_together_or_not_at_all(store, corrupt):
    """One corrupt half of a version: neither table changes, and no staging table is left behind."""
    store.load_version("whole", pair(40, 30, seed=41), 32)
    with pytest.raises(EmbeddingsLoadError):
        store.load_version("half-broken", corrupt(pair(45, 35, seed=43)), 32,
                           expected_rows={"pair_users": 35})
    assert store.active_version("pair_items") == store.active_version("pair_users") == "whole"
    assert (count(store, "pair_items"), count(store, "pair_users")) == (40, 30)
    tables = {r[0] for r in store.connection().execute(
        "SELECT tablename FROM pg_tables WHERE tablename LIKE 'pair\\_%'").fetchall()}
    registered = {v["physical_table"] for t in ("pair_items", "pair_users") for v in store.versions(t)
                  if v["status"] != "dropped"}
    assert tables - {"pair_items", "pair_users"} <= registered  # only kept versions, no staging leftovers


def test_readers_always_see_the_two_tables_of_one_version(store):
    sizes = {"p0": (300, 200), "p1": (400, 100), "p2": (350, 250), "p3": (500, 150)}
    store.load_version("p0", pair(*sizes["p0"], seed=50), 32)
    seen, errors, stop = set(), [], threading.Event()

    def reader():
        with store.db.connect(autocommit=True) as conn:
            while not stop.is_set():
                try:
                    seen.add(conn.execute("SELECT (SELECT count(*) FROM pair_items), "
                                          "(SELECT count(*) FROM pair_users)").fetchone())
                except psycopg.Error as exc:  # pragma: no cover - reported below
                    errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i, version in enumerate(("p1", "p2", "p3"), start=1):
            store.load_version(version, pair(*sizes[version], seed=50 + 2 * i), 32)
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert seen <= set(sizes.values()) and len(seen) >= 2, seen


def test_a_query_for_one_version_refuses_the_items_of_another(store):
    store.load_version("q1", {"versioned_emb": item_rows(50, seed=61)}, 32)
    asked = store.model_copy(update={"item_table": "versioned_emb"})
    query = item_rows(1, seed=62).vectors
    assert len(asked.recommend_batch(query, 3, [()], version="q1")[0]) == 3
    assert len(asked.similar_items_batch(["S00001"], 3, version="q1")[0]) == 3
    asked.load_version("q2", {"versioned_emb": item_rows(50, seed=63)}, 32)
    with pytest.raises(EmbeddingsVersionChanged, match="expected model version q1, found q2 live") as info:
        asked.recommend_batch(query, 3, [()], version="q1")
    assert info.value.live == "q2"
    with pytest.raises(EmbeddingsVersionChanged):
        asked.similar_items_batch(["S00001"], 3, version="q1")
    assert len(asked.recommend_batch(query, 3, [()])[0]) == 3  # without a version: no check
    asked.close()


def test_a_version_of_another_dimension_going_live_is_a_version_change_not_bad_data(store):
    """Vectors of the old version's dimension against a new live version of another dimension: the query
    says the version changed (the caller starts again with the new one) instead of blaming the values; and
    vectors that fit no version's dimension fail the whole batch, never event by event."""
    table = store.model_copy(update={"item_table": "dims_emb"})
    table.load_version("d32", {"dims_emb": item_rows(30, seed=71)}, 32)
    query = item_rows(1, seed=72).vectors
    table.load_version("d16", {"dims_emb": item_rows(30, dim=16, seed=73)}, 16)
    with pytest.raises(EmbeddingsVersionChanged, match="expected model version d32, found d16"):
        table.recommend_batch(query, 3, [()], version="d32")
    with pytest.raises(EmbeddingsMismatchError, match="dimension 32 against embeddings of dimension 16"):
        table.recommend_batch(query, 3, [()], version="d16")
    table.close()


def test_the_live_version_check_holds_whatever_the_servers_default_isolation(store):
    """Under a database default of REPEATABLE READ a query's snapshot could predate the swap it waited for;
    the store's sessions read committed, so a query meant for v1 that waited for a swap to v2 says so."""
    table = store.model_copy(update={"item_table": "iso_emb"})
    table.load_version("i1", {"iso_emb": item_rows(40, seed=81)}, 32)
    with store.db.connect(autocommit=True) as admin:
        database = admin.execute("SELECT current_database()").fetchone()[0]
        admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_isolation = \'repeatable read\'')
    try:
        reader = PgVectorStore(db=store.db, item_table="iso_emb")  # sessions opened under the new default
        reader.recommend_batch(item_rows(1, seed=82).vectors, 3, [()], version="i1")  # connected, plans cached
        staging = table.model_copy(update={"item_table": "iso_emb_next"})
        staging.load_version("i2", {"iso_emb_next": item_rows(45, seed=83)}, 32)
        outcome = []
        with store.db.connect() as swap:  # a swap, held open while the reader arrives
            swap.execute("LOCK TABLE iso_emb IN ACCESS EXCLUSIVE MODE")
            swap.execute("ALTER TABLE iso_emb RENAME TO iso_emb_old")
            swap.execute("ALTER TABLE iso_emb_next RENAME TO iso_emb")
            swap.execute("UPDATE embedding_versions SET status = 'previous' WHERE logical_table = 'iso_emb'")
            swap.execute("UPDATE embedding_versions SET logical_table = 'iso_emb' WHERE logical_table = 'iso_emb_next'")

            def read():
                try:
                    outcome.append(reader.recommend_batch(item_rows(1, seed=82).vectors, 3, [()], version="i1"))
                except EmbeddingsVersionChanged as exc:
                    outcome.append(exc)

            thread = threading.Thread(target=read)
            thread.start()
            with store.db.connect(autocommit=True) as observer:  # until the reader waits on the swap's lock
                deadline = time.monotonic() + 20
                while not observer.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event_type = "
                                           "'Lock' AND query LIKE '%%iso_emb%%')").fetchone()[0]:
                    assert time.monotonic() < deadline, "the reader never waited"
                    time.sleep(0.05)
            swap.commit()
        thread.join(timeout=30)
        [result] = outcome
        assert isinstance(result, EmbeddingsVersionChanged) and result.live == "i2", result
        reader.close()
    finally:
        with store.db.connect(autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_isolation')
        table.close()


def test_a_reader_holding_a_table_delays_a_load_but_never_hangs_it(store):
    """A reader on the live table: the swap keeps trying in short lock waits (so the readers queued behind
    it wait seconds, not for as long as the reader reads) and gives up cleanly, tables unchanged. A reader
    on an old table the retention would drop: the load completes and leaves that table for the next one."""
    busy = store.model_copy(update={"swap_wait_seconds": 3, "lock_timeout_seconds": 1, "retention": 1})
    busy.load_version("b1", {"busy_emb": item_rows(30, seed=91)}, 32)
    with store.db.connect() as reader:
        reader.execute("SELECT count(*) FROM busy_emb").fetchone()  # holds the live table until it ends
        with pytest.raises(EmbeddingsBusyError, match="readers kept the tables locked"):
            busy.load_version("b2", {"busy_emb": item_rows(31, seed=92)}, 32)
        assert busy.active_version("busy_emb") == "b1"
    busy.load_version("b2", {"busy_emb": item_rows(31, seed=92)}, 32)
    old = next(v["physical_table"] for v in busy.versions("busy_emb") if v["version"] == "b1")
    with store.db.connect() as reader:
        reader.execute(f"SELECT count(*) FROM {old}").fetchone()  # someone still reads the replaced version
        report = busy.load_version("b3", {"busy_emb": item_rows(32, seed=93)}, 32)["busy_emb"]
        assert busy.active_version("busy_emb") == "b3" and old not in report.dropped_tables
    report = busy.load_version("b4", {"busy_emb": item_rows(33, seed=94)}, 32)["busy_emb"]
    assert old in report.dropped_tables  # dropped by the next load, once free
    busy.close()
