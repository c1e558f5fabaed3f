"""``python -m gradstore``: the same as the ``gradstore`` command."""

from gradstore.cli import app

if __name__ == "__main__":
    app()
