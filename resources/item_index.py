"""Nearest items from memory: the live embeddings version's item vectors held in the process, exact top-k
with numpy, no database round trip per query; pgvector (HNSW) for catalogues larger than `max_items`.

`LiveItems` answers the queries of `resources.vector_queries.NearestItems` (which it wraps, and hands the
query to when the catalogue is too large to hold): `active_version`, `recommend_batch` and
`similar_items_batch`. Each query names the model version its vectors come from, and the answer is of that
version or `EmbeddingsVersionChanged`: the vectors are read by one statement together with the table's
live version, and are replaced when a query names a newer version. Scores and distances are pgvector's:
cosine similarity (`1 - (a <=> b)`) and cosine distance (`a <=> b`).

No Dagster, pandas or torch: the Firehose Lambda, the recommendations API and the hourly asset share it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import threadpoolctl

from resources.settings import DEFAULTS
from resources.vector_queries import EmbeddingsMismatchError, NearestItems

logger = logging.getLogger(__name__)

DEFAULT_MAX_ITEMS = DEFAULTS["item_index_max_items"]  # 32-d float32: 64 MB held per process (plus the answers remembered)
_BLOCK = 64  # items per block when pruning (see ItemIndex._top)
_DIRECT_BELOW = 8_192  # catalogues this small are ranked whole
_QUERY_CHUNK = 256  # queries scored at a time (their block maxima for 500,000 items: 8 MB)
_TILE_SCORES = 1 << 19  # scores computed at a time (2 MB, within a core's cache), items x queries
_GATHER_LIMIT = 1 << 22  # floats of candidate item vectors copied at a time (16 MB)
_CACHED_ANSWERS = 50_000  # rankings kept per version, of `_CACHED_DEPTH` items each: about 30 MB at most
_CACHED_DEPTH = 32  # items ranked per customer: enough for k plus a browse history's exclusions


class _Answers:
    """Answers already computed for one version, by query (a query vector's bytes, an item id): the ranking
    of a version never changes, and a stream asks about the same customers and products again and again.
    Bounded: the oldest half is forgotten when full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.store: dict = {}
        self.hits = self.misses = 0
        self.lock = threading.Lock()

    def get(self, key):
        found = self.store.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key, value) -> None:
        with self.lock:
            if len(self.store) >= self.limit:
                for old in list(self.store)[: self.limit // 2]:
                    del self.store[old]
            self.store[key] = value


@dataclass(frozen=True)
class ItemIndex:
    """One model version's item vectors, unit length, in a matrix; `position` maps an id to its row."""

    version: str
    ids: np.ndarray  # object array of ids, in row order
    matrix: np.ndarray  # float32, (items, dimension), C-contiguous, rows of length 1 (or 0)
    position: dict
    answers: _Answers = field(default_factory=lambda: _Answers(_CACHED_ANSWERS), compare=False)

    @classmethod
    def build(cls, version: str, ids: Sequence, vectors: np.ndarray) -> ItemIndex:
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            unit = np.where(norms > 0, vectors / norms, 0.0).astype(np.float32)
        ids = np.asarray([str(i) for i in ids], dtype=object)
        return cls(version, ids, np.ascontiguousarray(unit), {item: row for row, item in enumerate(ids)})

    @property
    def dimension(self) -> int:
        return self.matrix.shape[1]

    def __len__(self) -> int:
        return len(self.ids)

    def top(self, queries: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        """For each query (unit vectors), the rows of the `want` most similar items and their cosine
        similarities, most similar first (ties by row)."""
        want = min(want, len(self))
        if want == 0:
            return np.empty((len(queries), 0), dtype=np.int64), np.empty((len(queries), 0), dtype=np.float32)
        rows = np.empty((len(queries), want), dtype=np.int64)
        scores = np.empty((len(queries), want), dtype=np.float32)
        for start in range(0, len(queries), _QUERY_CHUNK):
            part = slice(start, start + _QUERY_CHUNK)
            rows[part], scores[part] = self._top(np.ascontiguousarray(queries[part]), want)
        return rows, scores

    def _top(self, queries: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        n, m = len(self), len(queries)
        if n < _DIRECT_BELOW or want * _BLOCK >= n:
            return _best(np.broadcast_to(np.arange(n), (m, n)), (queries @ self.matrix.T), want)
        # Exact pruning in two passes. 1: every item's score, kept only as its block's maximum (items down,
        # queries across, a cache-sized tile at a time: the maxima reduce whole rows at a time, SIMD-wide).
        # 2: the `want` best items all lie in blocks whose maximum reaches the `want`-th highest block maximum
        # (`want` blocks each hold an item that good, so the `want`-th best score is at least that), usually
        # exactly `want` blocks: only their items are scored again and ranked.
        _single_threaded_blas()
        maxima = self._block_maxima(queries)
        floor = -np.partition(-maxima, want - 1, axis=1)[:, want - 1]
        reached = maxima >= floor[:, None]
        counts = reached.sum(axis=1)
        rows = np.empty((m, want), dtype=np.int64)
        values = np.empty((m, want), dtype=np.float32)
        # Ties: a query whose floor is reached by many blocks (many equal scores) is ranked whole
        whole = counts > 4 * want
        for query in np.flatnonzero(whole):
            rows[query], values[query] = (a[0] for a in _best(np.arange(n)[None, :],
                                                              (self.matrix @ queries[query])[None, :], want))
        for width in np.unique(counts[~whole]):  # one pass per number of blocks reached (almost always `want`)
            group = np.flatnonzero(counts == width)
            step = max(1, _GATHER_LIMIT // (width * _BLOCK * self.dimension))  # queries whose candidates fit the limit
            for start in range(0, len(group), step):
                chosen = group[start:start + step]
                blocks = np.nonzero(reached[chosen])[1].reshape(len(chosen), width)
                candidates = (blocks[:, :, None] * _BLOCK + np.arange(_BLOCK)).reshape(len(chosen), -1)
                inside = candidates < n  # the last block may be partial
                vectors = self.matrix[np.minimum(candidates, n - 1)]  # (queries, candidates, dimension)
                scores = np.matmul(vectors, queries[chosen][:, :, None])[:, :, 0]
                scores[~inside] = -np.inf
                rows[chosen], values[chosen] = _best(candidates, scores, want)
        return rows, values

    def _block_maxima(self, queries: np.ndarray) -> np.ndarray:
        """(queries, blocks): the best score in each block of `_BLOCK` items, for each query; the blocks
        are shared out between our threads (BLAS single-threaded: see `_single_threaded_blas`)."""
        n, m = len(self), len(queries)
        blocks = -(-n // _BLOCK)
        maxima = np.empty((blocks, m), dtype=np.float32)
        across = np.ascontiguousarray(queries.T)
        tile = max(_BLOCK, min(n, _TILE_SCORES // m) // _BLOCK * _BLOCK)
        share = -(-blocks // _WORKERS)
        parts = [_pool().submit(_maxima_of, self.matrix, across, maxima, first, min(blocks, first + share), tile)
                 for first in range(share, blocks, share)]
        _maxima_of(self.matrix, across, maxima, 0, min(blocks, share), tile)  # the first share on this thread
        for part in parts:
            part.result()
        return np.ascontiguousarray(maxima.T)

    def rankings(self, keys: list, queries: np.ndarray, want: int,
                 depth: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """(rows, similarities) of at least the `want` best items for each query, best first; each distinct
        query computed once (`depth` items deep, when deeper than `want`), and at most once per version while
        its answer is remembered."""
        found: dict = {}
        missing: dict = {}
        for position, key in enumerate(keys):
            if key in found or key in missing:
                continue
            cached = self.answers.get(key)
            if cached is not None and (len(cached[0]) >= want or len(cached[0]) == len(self)):
                found[key] = cached
            else:
                missing[key] = position
        if missing:
            depth = max(want, depth)
            rows, scores = self.top(queries[list(missing.values())], depth)
            for key, row_ids, row_scores in zip(missing, rows, scores):
                found[key] = (row_ids, row_scores)
                if depth <= _CACHED_DEPTH:  # deeper rankings (a limit of 100) are not kept
                    self.answers.put(key, (row_ids, row_scores))
        return [found[key] for key in keys]

    def recommend(self, vectors: np.ndarray, k: int, exclude: Sequence[set[str]]) -> list[list[tuple[str, float]]]:
        if vectors.shape[1] != self.dimension:
            raise EmbeddingsMismatchError(f"query vectors of dimension {vectors.shape[1]} against embeddings of "
                                          f"dimension {self.dimension} (version {self.version})")
        wide = np.asarray(vectors, dtype=np.float64)  # a float32 norm overflows from about 1e19
        norms = np.linalg.norm(wide, axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            queries = np.where((norms > 0) & np.isfinite(norms), wide / norms, 0.0).astype(np.float32)
        want = k + max((len(e) for e in exclude), default=0)
        results = []
        keys = [b"u" + query.tobytes() for query in queries]
        # a customer's ranking is kept deeper than asked: the next event's browse history may exclude more
        for (row_ids, row_scores), excluded in zip(self.rankings(keys, queries, want, _CACHED_DEPTH), exclude):
            found = [(self.ids[r], float(s)) for r, s in zip(row_ids[:want], row_scores) if self.ids[r] not in excluded]
            results.append(found[:k])
        return results

    def similar(self, codes: Sequence[str], k: int) -> list[list[tuple[str, float]] | None]:
        known = [self.position.get(code) for code in codes]
        present = [row for row in known if row is not None]
        results: list[list[tuple[str, float]] | None] = [None] * len(codes)
        if not present:
            return results
        answers = iter(zip(present, self.rankings([("i", row) for row in present], self.matrix[present], k + 1)))
        for slot, row in enumerate(known):
            if row is None:
                continue
            own, (row_ids, row_scores) = next(answers)
            results[slot] = [(self.ids[r], float(1.0 - s)) for r, s in zip(row_ids[:k + 1], row_scores) if r != own][:k]
        return results


def _best(rows: np.ndarray, values: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query (a row of `values`, the scores of the items `rows`): the `want` best, best first, equal scores
    in the order of their rows, exactly as a stable sort of all of them would rank them."""
    count = values.shape[1]
    if count > want:
        cut = np.partition(values, count - want, axis=1)[:, count - want]  # the want-th best score
        keep = values >= cut[:, None]
        kept = keep.sum(axis=1)
        if (kept == want).all():  # no tie across the cut: exactly `want` kept per query
            positions = np.nonzero(keep)[1].reshape(len(values), want)
            rows, values = (np.take_along_axis(a, positions, axis=1) for a in (rows, values))
        else:
            chosen_rows = np.empty((len(values), want), dtype=np.int64)
            chosen_values = np.empty((len(values), want), dtype=values.dtype)
            for query in range(len(values)):
                positions = np.flatnonzero(keep[query])
                order = np.lexsort((rows[query, positions], -values[query, positions]))[:want]
                chosen_rows[query], chosen_values[query] = rows[query, positions][order], values[query, positions][order]
            return chosen_rows, chosen_values
    order = np.lexsort((rows, -values), axis=1)  # best first; equal scores by row, as a stable sort
    return np.take_along_axis(rows, order, axis=1), np.take_along_axis(values, order, axis=1)


def _maxima_of(matrix: np.ndarray, across: np.ndarray, maxima: np.ndarray, first: int, last: int, tile: int) -> None:
    """`maxima[first:last]`: block maxima of the scores of blocks `first` to `last` against the queries
    `across` (dimension x queries), a tile of items at a time."""
    n, m = len(matrix), across.shape[1]
    scores = np.empty((tile, m), dtype=np.float32)
    start, stop = first * _BLOCK, min(n, last * _BLOCK)
    for begin in range(start, stop, tile):
        end = min(stop, begin + tile)
        part = np.matmul(matrix[begin:end], across, out=scores[:end - begin])
        whole = (end - begin) // _BLOCK * _BLOCK
        block = begin // _BLOCK
        if whole:
            np.max(part[:whole].reshape(-1, _BLOCK, m), axis=1, out=maxima[block:block + whole // _BLOCK])
        if whole < end - begin:  # the catalogue's last, partial block
            maxima[block + whole // _BLOCK] = part[whole:].max(axis=0)


_WORKERS = min(2, os.cpu_count() or 1)  # threads scoring one batch of queries (the calling one included)
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_blas_lock = threading.Lock()
_blas_limited = False


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(_WORKERS, thread_name_prefix="item-index")
        return _executor


def _single_threaded_blas() -> None:
    """From a process's first ranking of a large catalogue on, BLAS runs single-threaded in that process (the
    hourly enrichment's step, the Lambda, the API): the ranking shares the cores itself, and BLAS's own
    threads, which keep spinning for a while after each product they share out (the user tower's, say),
    would take the cores from it (it ran twice as slow). Process-wide and never undone: limiting BLAS for a
    while and restoring it is not safe with callers on several threads."""
    global _blas_limited
    if _blas_limited:
        return
    with _blas_lock:
        if not _blas_limited:
            threadpoolctl.threadpool_limits(limits=1, user_api="blas")
            _blas_limited = True
            logger.info("BLAS set to one thread in this process: the in-memory item ranking shares the cores itself")

class LiveItems:
    """`NearestItems` queries answered from the item vectors of the version asked about, held in memory
    while the catalogue has at most `max_items` items (else by `store`, through its HNSW index)."""

    def __init__(self, store: NearestItems, max_items: int = DEFAULT_MAX_ITEMS) -> None:
        self.store = store
        self.max_items = max_items
        self._index: ItemIndex | None = None
        self._too_large: set[str] = set()  # versions answered by the store
        self._lock = threading.Lock()

    @property
    def item_table(self) -> str:
        return self.store.item_table

    def active_version(self, table: str) -> str | None:
        return self.store.active_version(table)

    def index_for(self, version: str) -> ItemIndex | None:
        """`version`'s items in memory (read now if another version was held), or None when the catalogue
        is larger than `max_items`. `EmbeddingsVersionChanged` when `version` is no longer live."""
        index = self._index
        if index is not None and index.version == version:
            return index
        if version in self._too_large:
            return None
        with self._lock:
            if self._index is not None and self._index.version == version:
                return self._index
            loaded = self.store.item_vectors(version, self.max_items)
            if loaded is None:
                self._too_large.add(version)
                return None
            self._index = ItemIndex.build(version, *loaded)
            return self._index

    def recommend_batch(self, vectors, k: int = 5, exclude_ids: Sequence[Sequence[str]] | None = None,
                        version: str | None = None) -> list[list[tuple[str, float]]]:
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(vectors) == 0:
            return []
        version = version or self._live()
        index = self.index_for(version) if version else None
        if index is None:
            return self.store.recommend_batch(vectors, k, exclude_ids, version=version)
        excludes = [set(map(str, ex)) for ex in (exclude_ids or [()] * len(vectors))]
        return index.recommend(vectors, k, excludes)

    def similar_items_batch(self, product_codes: Sequence[str], k: int = 5,
                            version: str | None = None) -> list[list[tuple[str, float]] | None]:
        if not product_codes:
            return []
        version = version or self._live()
        index = self.index_for(version) if version else None
        if index is None:
            return self.store.similar_items_batch(product_codes, k, version=version)
        return index.similar([str(code) for code in product_codes], k)

    def _live(self) -> str | None:
        return self.store.active_version(self.item_table)

    def close(self) -> None:
        self.store.close()
