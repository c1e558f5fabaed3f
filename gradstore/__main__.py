"""``python -m gradstore``: the same as the ``gradstore`` command."""

from gradstore.cli import main

if __name__ == "__main__":
    main()
