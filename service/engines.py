"""Loaded datastores (model + adapters + index), kept in a small LRU cache.

Loading a store costs seconds (model weights, checksums, FAISS index); a query costs
milliseconds once it is loaded. Each engine serialises its own gradient work with its
lock; different datastores run in parallel.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from gradstore.query import QueryEngine
from gradstore.store import Datastore


class EngineCache:
    def __init__(self, capacity: int, device: str | None = None):
        self.capacity = max(1, capacity)
        self.device = device
        self._engines: OrderedDict[str, QueryEngine] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, datastore_id: str, path: str) -> QueryEngine:
        with self._lock:
            if datastore_id in self._engines:
                self._engines.move_to_end(datastore_id)
                return self._engines[datastore_id]
            loading = self._loading.setdefault(datastore_id, threading.Lock())
        with loading:  # one load per store even when queries arrive together
            with self._lock:
                if datastore_id in self._engines:
                    return self._engines[datastore_id]
            engine = QueryEngine(Datastore.open(path), device=self.device)
            with self._lock:
                self._engines[datastore_id] = engine
                while len(self._engines) > self.capacity:
                    self._engines.popitem(last=False)
                self._loading.pop(datastore_id, None)
            return engine

    def evict(self, datastore_id: str) -> None:
        with self._lock:
            self._engines.pop(datastore_id, None)
