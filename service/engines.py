"""Loaded datastores (index, caches), kept in a small LRU cache; their models are pooled.

Loading a store costs seconds (model weights, FAISS index); a query costs milliseconds once
it is loaded. An engine takes its model from the process's ``model_pool`` (one copy of the
weights however many engines and methods use them; the pool's capacity, not this cache,
bounds how many models the process holds); passes of one model run under its
lock; different models run in parallel. A store is loaded only when its files still have the
fingerprint its last verification recorded (db/integrity.py), and an engine loaded for
another fingerprint (files restored and verified again) is loaded anew.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from gradstore.db.integrity import fingerprint as stat_fingerprint
from gradstore.errors import ManifestMismatchError
from gradstore.query import QueryEngine
from gradstore.store.datastore import Datastore


class EngineCache:
    def __init__(self, capacity: int, device: str | None = None):
        self.capacity = max(1, capacity)
        self.device = device
        self._engines: OrderedDict[str, tuple[QueryEngine, str | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def _cached(self, datastore_id: str, fingerprint: str | None) -> QueryEngine | None:
        entry = self._engines.get(datastore_id)
        if entry is None:
            return None
        if entry[1] != fingerprint:
            del self._engines[datastore_id]
            return None
        self._engines.move_to_end(datastore_id)
        return entry[0]

    def get(self, datastore_id: str, path: str, fingerprint: str | None = None) -> QueryEngine:
        """The loaded store; ``fingerprint``: refuse it unless its files still have this one."""
        with self._lock:
            if (engine := self._cached(datastore_id, fingerprint)) is not None:
                return engine
            loading = self._loading.setdefault(datastore_id, threading.Lock())
        with loading:  # one load per store even when queries arrive together
            with self._lock:
                if (engine := self._cached(datastore_id, fingerprint)) is not None:
                    return engine
            try:
                store = Datastore.open(path)
                if fingerprint is not None and stat_fingerprint(store) != fingerprint:
                    raise ManifestMismatchError(
                        "files of the datastore (or of its model) changed on disk since it was "
                        "verified"
                    )
                engine = QueryEngine(store, device=self.device)
            finally:
                with self._lock:
                    self._loading.pop(datastore_id, None)
            with self._lock:
                self._engines[datastore_id] = (engine, fingerprint)
                while len(self._engines) > self.capacity:
                    self._engines.popitem(last=False)
            return engine

    def evict(self, datastore_id: str) -> None:
        with self._lock:
            self._engines.pop(datastore_id, None)
