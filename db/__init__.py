"""The state the API and the workers share: tables, sessions, the work queue and settings,
and the rules both apply: store integrity (integrity), model roots (model_roots) and the
JSON logs with their context ids (logs).

Both ``gradstore.service`` and ``gradstore.worker`` import this package and never each
other, so either runs without the other installed in its process.
"""
