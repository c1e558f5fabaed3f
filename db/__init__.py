"""The state the API and the workers share: tables, sessions, the work queue and settings.

Both ``gradstore.service`` and ``gradstore.worker`` import this package and never each
other, so either runs without the other installed in its process.
"""
