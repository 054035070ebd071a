"""Local directories and S3-compatible object storage behind one pyarrow filesystem interface.

Endpoint and region come from `S3Config` (falling back to AWS_ENDPOINT_URL / AWS_REGION); credentials
only from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN). Errors are
rephrased without credentials. Paths on an S3 filesystem are `bucket/key` (no scheme).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow.fs as pafs

from pipelines.data.config import S3Config

__all__ = ["StorageError", "resolve", "filesystem", "is_s3", "display", "list_dir", "read_bytes",
           "write_bytes", "exists", "storage_error"]

_AUTH_CODES = ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "EXPIRED_TOKEN",
               "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "UNKNOWN (HTTP status 403)")


class StorageError(OSError):
    """A storage problem phrased for the user (location, likely cause); never carries credentials."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _endpoint(s3: S3Config | None) -> tuple[str | None, str]:
    url = (s3.endpoint_url if s3 else None) or os.environ.get("AWS_ENDPOINT_URL") or None
    region = (s3.region if s3 else None) or os.environ.get("AWS_REGION") or os.environ.get(
        "AWS_DEFAULT_REGION") or "us-east-1"
    return url, region


def s3_filesystem(s3: S3Config | None = None) -> pafs.S3FileSystem:
    url, region = _endpoint(s3)
    kwargs: dict = {"region": region}
    if url:
        scheme, _, host = url.partition("://")
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme)
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str, s3: S3Config | None = None) -> tuple[pafs.FileSystem | None, str]:
    """(filesystem, path): `(None, absolute path)` for a local location, `(S3FileSystem, "bucket/key")` for S3."""
    if is_s3(uri):
        return s3_filesystem(s3), uri[len("s3://"):].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return None, str(Path(uri).expanduser().resolve())


def filesystem(uri: str, s3: S3Config | None = None) -> tuple[pafs.FileSystem, str]:
    """Like `resolve`, but always a filesystem (LocalFileSystem for local paths)."""
    fs, path = resolve(uri, s3)
    return fs or pafs.LocalFileSystem(), path


def display(fs: pafs.FileSystem, path: str) -> str:
    """The user-facing URI of `path` on `fs`."""
    return f"s3://{path}" if isinstance(fs, pafs.S3FileSystem) else path


def storage_error(err: OSError, fs: pafs.FileSystem, path: str, action: str) -> StorageError:
    """Rephrase a pyarrow/OS error as one line: where, what, likely cause. Credentials never appear."""
    where = display(fs, path)
    text = _scrub(str(err))
    if isinstance(err, FileNotFoundError) or "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
        return StorageError(f"{action} {where}: not found")
    if any(code in text for code in _AUTH_CODES):
        return StorageError(f"{action} {where}: access denied by the storage endpoint; check AWS_ACCESS_KEY_ID / "
                            "AWS_SECRET_ACCESS_KEY in the environment and data.s3.endpoint_url")
    first = text.split("\n")[0]
    first = re.sub(r"\(Request ID: [^)]*\)", "", first).strip()
    return StorageError(f"{action} {where}: {first}")


def _scrub(text: str) -> str:
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(var)
        if secret:
            text = text.replace(secret, "***")
    return text


def list_dir(fs: pafs.FileSystem, path: str, recursive: bool = False) -> list[pafs.FileInfo]:
    """Files (not directories) under `path`, sorted by path; StorageError if the location is missing/denied."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    except OSError as e:
        raise storage_error(e, fs, path, "listing") from None
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as e:
        raise storage_error(e, fs, path, "checking") from None


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except OSError as e:
        raise storage_error(e, fs, path, "reading") from None


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    try:
        parent = path.rsplit("/", 1)[0]
        if isinstance(fs, pafs.LocalFileSystem) and parent:
            fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(data)
    except OSError as e:
        raise storage_error(e, fs, path, "writing") from None
