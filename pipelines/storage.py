"""Local directories and S3-compatible object storage behind one pyarrow filesystem interface, for every part
of the pipeline: data (pool, curated set, manifests), checkpoints and run outputs (with `storage.s3`), sweeps
(credentials hidden from Ray), model import/export.

Endpoint and region come from `S3Config` (falling back to AWS_ENDPOINT_URL / AWS_REGION); credentials
only from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN). Errors are
rephrased without credentials. Paths on an S3 filesystem are `bucket/key` (no scheme). Failing S3 requests
(endpoint unreachable, throttled, 5xx) are retried with exponential backoff for `S3Config.retry_seconds`.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pyarrow.fs as pafs

from pipelines.data.config import S3Config

__all__ = [
    "StorageError",
    "RetryingS3FileSystem",
    "retry_attempts",
    "credentials_hidden_from_ray",
    "resolve",
    "filesystem",
    "is_s3",
    "display",
    "list_dir",
    "read_bytes",
    "write_bytes",
    "exists",
    "storage_error",
]

_AUTH_CODES = (
    "ACCESS_DENIED",
    "INVALID_ACCESS_KEY_ID",
    "SIGNATURE_DOES_NOT_MATCH",
    "EXPIRED_TOKEN",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "UNKNOWN (HTTP status 403)",
)


_UNREACHABLE = ("NETWORK_CONNECTION", "Could not connect to server", "curlCode: 7,", "curlCode: 28,")


class StorageError(OSError):
    """A storage problem phrased for the user (location, likely cause); never carries credentials."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _endpoint(s3: S3Config | None) -> tuple[str | None, str]:
    url = (s3.endpoint_url if s3 else None) or os.environ.get("AWS_ENDPOINT_URL") or None
    region = (
        (s3.region if s3 else None)
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    )
    return url, region


def retry_attempts(seconds: float) -> int:
    """Attempts for pyarrow's `AwsDefaultS3RetryStrategy` so that a failing request is retried for at least
    `seconds`. Its waits double from 50 ms (50, 100, 200 ms, ...): N attempts wait 0.025 * (2**N - 2) s in
    all, so the real window is between `seconds` and about twice that."""
    n = 1
    while 0.025 * (2**n - 2) < seconds:
        n += 1
    return n


_KEYS = ("access_key", "secret_key", "session_token")


class RetryingS3FileSystem(pafs.S3FileSystem):
    """An S3FileSystem whose retry strategy survives pickling. pyarrow's own `__reduce__` drops
    `retry_strategy`, so the filesystem a Ray task receives would fall back to 3 attempts (~1 s).

    `keys_in_pickle=False` pickles it without the credentials: the process that unpickles it reads them
    from its own environment (or the AWS default chain). Used for checkpoint / sweep storage, whose
    filesystem Ray Train and Tune also write to disk (e.g. Tune's `tuner.pkl`, next to the checkpoints)."""

    def __init__(self, *, max_attempts: int = 3, keys_in_pickle: bool = True, **kwargs):
        super().__init__(retry_strategy=pafs.AwsDefaultS3RetryStrategy(max_attempts=max_attempts), **kwargs)
        self.max_attempts, self.keys_in_pickle = max_attempts, keys_in_pickle
        host = kwargs.get("endpoint_override")
        self.endpoint = f"{kwargs.get('scheme', 'https')}://{host}" if host else "AWS S3"

    @property
    def retry_window(self) -> float:
        """Seconds a failing request is retried for (see `retry_attempts`)."""
        return 0.025 * (2**self.max_attempts - 2)

    def __reduce__(self):
        _, (kwargs,) = super().__reduce__()
        if not self.keys_in_pickle:
            kwargs = {k: v for k, v in kwargs.items() if k not in _KEYS}
        return _rebuild_s3, (kwargs, self.max_attempts, self.keys_in_pickle)


def _rebuild_s3(kwargs: dict, max_attempts: int, keys_in_pickle: bool = True) -> RetryingS3FileSystem:
    if not keys_in_pickle:
        kwargs = {**kwargs, **_env_keys()}
    return RetryingS3FileSystem(max_attempts=max_attempts, keys_in_pickle=keys_in_pickle, **kwargs)


def _env_keys() -> dict:
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return {"access_key": key, "secret_key": secret, "session_token": os.environ.get("AWS_SESSION_TOKEN")}
    return {}


CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


@contextlib.contextmanager
def credentials_hidden_from_ray():
    """Take the AWS credential variables out of this process's environment for the duration (restored after).

    Ray Tune copies them from the driver's environment into every trial actor's `runtime_env.env_vars`, which
    Ray's State API and dashboard then show in clear to anyone who can reach it. Filesystems built before
    keep their keys; the workers of a local cluster inherit the variables from the raylet (started with them),
    and on a remote cluster credentials come from the cluster's own environment, as everywhere else."""
    saved = {k: os.environ.pop(k) for k in CREDENTIAL_VARS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def s3_filesystem(s3: S3Config | None = None, keys_in_pickle: bool = True) -> pafs.S3FileSystem:
    url, region = _endpoint(s3)
    kwargs: dict = {"region": region}
    if url:
        scheme, _, host = url.partition("://")
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme)
    kwargs.update(_env_keys())
    seconds = s3.retry_seconds if s3 is not None else S3Config.model_fields["retry_seconds"].default
    return RetryingS3FileSystem(max_attempts=retry_attempts(seconds), keys_in_pickle=keys_in_pickle, **kwargs)


def resolve(uri: str, s3: S3Config | None = None, keys_in_pickle: bool = False) -> tuple[pafs.FileSystem | None, str]:
    """(filesystem, path): `(None, absolute path)` for a local location, `(S3FileSystem, "bucket/key")` for S3.

    For checkpoint / sweep storage: the S3 filesystem pickles without credentials (Ray Train and Tune write
    it to disk); where it is unpickled, credentials come from that process's environment."""
    if is_s3(uri):
        return s3_filesystem(s3, keys_in_pickle), uri[len("s3://") :].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return None, str(Path(uri).expanduser().resolve())


def filesystem(uri: str, s3: S3Config | None = None) -> tuple[pafs.FileSystem, str]:
    """Like `resolve`, but always a filesystem (LocalFileSystem for local paths), and one that carries the
    credentials when pickled: the data filesystem is handed to Ray Data tasks in memory, never written."""
    fs, path = resolve(uri, s3, keys_in_pickle=True)
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
        return StorageError(
            f"{action} {where}: access denied by the storage endpoint; check AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY in the environment and s3.endpoint_url (data.s3, storage.s3)"
        )
    if any(code in text for code in _UNREACHABLE):
        retried = f"retried for {fs.retry_window:.0f} s; " if isinstance(fs, RetryingS3FileSystem) else ""
        endpoint = fs.endpoint if isinstance(fs, RetryingS3FileSystem) else "the storage endpoint"
        return StorageError(
            f"{action} {where}: storage endpoint {endpoint} unreachable ({retried}check that it is "
            "up, s3.endpoint_url and s3.retry_seconds of data.s3 / storage.s3)"
        )
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
