"""End-to-end demos: the toy one (``toy``, the README's first command) and the real-model
one (``real``)."""
