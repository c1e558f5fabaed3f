"""A datastore on disk and what reads it: files and manifest (``datastore``), exact
blockwise search (``search``), FAISS indexes (``index``), and the process's one model of a
store (``model_pool``)."""
