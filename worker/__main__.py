"""``python -m gradstore.worker``: the same as ``gradstore worker``."""

import typer

from gradstore.worker.commands import worker

if __name__ == "__main__":
    typer.run(worker)
