"""``python -m gradstore.cli``: the same as the ``gradstore`` command."""

from gradstore.cli.commands import main

if __name__ == "__main__":
    main()
