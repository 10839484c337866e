"""Nearest items in memory (`resources.item_index`): the exact answers, of the version asked about."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from recsys_assets.embeddings import EmbeddingRows
from resources.item_index import ItemIndex, LiveItems
from resources.pgvector import PgVectorStore
from resources.vector_queries import EmbeddingsMismatchError, EmbeddingsVersionChanged


def brute_force(matrix: np.ndarray, ids: list[str], query: np.ndarray, k: int, excluded=()) -> list[str]:
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    order = np.lexsort((np.arange(len(ids)), -scores))
    return [ids[i] for i in order if ids[i] not in excluded][:k]


@pytest.mark.parametrize("items", [7, 300, 20_000, 100_003])  # the last two through the block pruning
def test_recommendations_and_similar_items_are_the_exact_top_k(items):
    rng = np.random.default_rng(items)
    matrix = rng.normal(size=(items, 32)).astype(np.float32)
    matrix[items // 2] = matrix[items // 3]  # a duplicate item: a tie, broken by row
    ids = [f"P{i:06d}" for i in range(items)]
    index = ItemIndex.build("v1", ids, matrix)
    queries = rng.normal(size=(40, 32)).astype(np.float32)
    excludes = [set(rng.choice(ids, size=i % 6, replace=False)) for i in range(40)]
    for _round in (1, 2):  # the second round is answered from what the first remembered
        answers = index.recommend(queries, 5, excludes)
        for query, excluded, answer in zip(queries, excludes, answers):
            assert [item for item, _score in answer] == brute_force(matrix, ids, query, 5, excluded)[:min(5, items)]
            scores = [score for _item, score in answer]
            assert scores == sorted(scores, reverse=True)
    assert index.answers.hits == 40
    similar = index.similar([ids[0], "unknown", ids[-1], ids[0]], 5)
    assert similar[1] is None and similar[0] == similar[3]
    for code, answer in ((ids[0], similar[0]), (ids[-1], similar[2])):
        row = ids.index(code)
        assert code not in [item for item, _d in answer]
        assert [item for item, _d in answer] == [i for i in brute_force(matrix, ids, matrix[row], 6) if i != code][:5]
        assert all(0 <= distance <= 2 for _item, distance in answer)
    # more exclusions than a remembered ranking holds: computed again, still exact
    many = set(brute_force(matrix, ids, queries[0], 40)[:35]) if items > 40 else set()
    assert [i for i, _s in index.recommend(queries[:1], 5, [many])[0]] == \
        brute_force(matrix, ids, queries[0], 5, many)[:min(5, items - len(many))]


@pytest.mark.parametrize("items, tied, k", [(300, 300, 5), (300, 40, 20), (20_000, 400, 5), (20_000, 70, 60),
                                            (100_003, 2_000, 100)])
def test_items_tied_at_the_cut_are_taken_in_row_order(items, tied, k):
    """Equal scores across the k-th place (duplicated items): the answer is brute force's, by row, on the
    direct path and through the block pruning, including ties spread over more blocks than are kept."""
    rng = np.random.default_rng(items + tied)
    matrix = rng.normal(size=(items, 32)).astype(np.float32) * 0.01
    query = rng.normal(size=32).astype(np.float32)
    for row in rng.choice(items, size=tied, replace=False):
        matrix[row] = query  # the best score, shared by `tied` items spread over the catalogue
    ids = [f"P{i:06d}" for i in range(items)]
    index = ItemIndex.build("v1", ids, matrix)
    answer = [item for item, _s in index.recommend(query[None, :], k, [set()])[0]]
    assert answer == brute_force(matrix, ids, query, k)
    # among many queries at once (scored by two threads, and by matrix products, whose rounding may differ in
    # the last bit between equal items): the tied query gets k of its tied items (or all of them and then the
    # next best), every other query k items as good as brute force's (equal up to rounding)
    others = rng.normal(size=(40, 32)).astype(np.float32)
    batch = np.concatenate([others[:20], query[None, :], others[20:]])
    answers = ItemIndex.build("v1", ids, matrix).recommend(batch, k, [set()] * len(batch))
    best = {ids[row] for row in np.flatnonzero((matrix == query).all(axis=1))}
    found = [item for item, _s in answers[20]]
    assert len(found) == k and (set(found) <= best if tied >= k else best <= set(found))
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    for vector, answer in zip(np.delete(batch, 20, axis=0), answers[:20] + answers[21:]):
        exact = unit @ (vector / np.linalg.norm(vector))
        rows = [ids.index(item) for item, _s in answer]
        assert len(set(rows)) == k
        np.testing.assert_allclose(exact[rows], np.sort(exact)[::-1][:k], atol=1e-6)


def test_a_query_of_another_dimension_is_refused():
    index = ItemIndex.build("v1", ["a", "b"], np.eye(2, 32, dtype=np.float32))
    with pytest.raises(EmbeddingsMismatchError, match="dimension 16 against embeddings of dimension 32"):
        index.recommend(np.ones((1, 16), dtype=np.float32), 1, [set()])


def test_live_items_answer_from_memory_for_the_live_version_and_from_pgvector_beyond_the_limit(app_db):
    store = PgVectorStore(db=app_db, item_table="mem_items", user_table="mem_users")
    rng = np.random.default_rng(5)
    ids = np.array([f"S{i:04d}" for i in range(500)], dtype=object)
    first, second = (rng.normal(size=(500, 32)).astype(np.float32) for _ in range(2))
    users = EmbeddingRows(np.arange(3, dtype=np.int64), rng.normal(size=(3, 32)).astype(np.float32), "users")
    store.load_version("m1", {"mem_items": EmbeddingRows(ids, first, "items"), "mem_users": users}, 32)
    query = rng.normal(size=(1, 32)).astype(np.float32)
    try:
        held, queried = LiveItems(store, max_items=500), LiveItems(store, max_items=499)
        from_memory = held.recommend_batch(query, 5, [()], version="m1")
        assert held.index_for("m1") is not None and queried.index_for("m1") is None
        from_pgvector = queried.recommend_batch(query, 5, [()], version="m1")
        assert [i for i, _s in from_memory[0]] == [i for i, _s in from_pgvector[0]] == brute_force(first, list(ids), query[0], 5)
        assert np.allclose([s for _i, s in from_memory[0]], [s for _i, s in from_pgvector[0]], atol=1e-5)
        assert held.similar_items_batch(["S0001"], 3, version="m1") == \
            [[(i, pytest.approx(d, abs=1e-5)) for i, d in store.similar_items("S0001", 3)]]
        # a new version goes live: the old one can no longer be asked for, the new one is read
        store.load_version("m2", {"mem_items": EmbeddingRows(ids, second, "items"), "mem_users": users}, 32)
        fresh = LiveItems(store, max_items=500)
        with pytest.raises(EmbeddingsVersionChanged):
            fresh.recommend_batch(query, 5, [()], version="m1")
        assert [i for i, _s in held.recommend_batch(query, 5, [()], version="m2")[0]] == \
            brute_force(second, list(ids), query[0], 5)
        assert held.index_for("m2").version == "m2"
    finally:
        store.close()


def test_a_process_that_ranks_a_large_catalogue_runs_blas_single_threaded_from_then_on():
    """BLAS's spinning threads would take the cores from the ranking's own: the first ranking of a catalogue
    large enough to be shared out sets BLAS to one thread for the process (a fresh one here); a small
    catalogue leaves it alone."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: BLAS has one thread anyway")
    script = """
import numpy as np, threadpoolctl
from resources.item_index import ItemIndex
def threads():
    return {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}
rng = np.random.default_rng(0)
before = threads()
ItemIndex.build("v", [str(i) for i in range(500)], rng.normal(size=(500, 32))).top(rng.normal(size=(3, 32)), 5)
small = threads()
ItemIndex.build("v", [str(i) for i in range(20_000)], rng.normal(size=(20_000, 32))).top(rng.normal(size=(3, 32)), 5)
print(sorted(before), sorted(small), sorted(threads()))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "2"}).stdout.split("]")
    assert [part.strip(" [\n") for part in out[:3]] == ["2", "2", "1"]
