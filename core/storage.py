"""The one storage layer: local paths as they are, object-store URLs (`s3://bucket/key`) through
fsspec + s3fs.

Every place that reads or writes a path a user can give (config file, data_dir, mirror, ...)
asks here. Local paths never import the object-store stack; `s3://` needs the `s3` extra
(`pip install -e ".[s3]"`). Credentials come only from the standard AWS chain (environment
variables, `AWS_PROFILE` / `~/.aws`, instance roles), read by botocore; nothing here stores them.
The endpoint of a non-AWS store comes from `AWS_ENDPOINT_URL` or `storage.endpoint_url`.

Errors a user can fix (no credentials, unreachable endpoint, missing bucket or key, access
denied) are `StorageError`: one line naming the URL and what to set.
"""
from __future__ import annotations

import functools
import os
from typing import Any

from core.errors import ConfigError

SCHEME = "s3://"
ENDPOINT_ENV = "AWS_ENDPOINT_URL"
CREDENTIAL_HINT = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
# The results index of a mirror (written by training/mirror.py): one object per run under
# INDEX/, merged on read; RUNS_JSON at the mirror's root is their latest merge.
INDEX = "index"
RUNS_JSON = "runs.json"


class StorageError(ConfigError):
    """An object-store problem a user can fix; one line: the URL, what happened, what to set."""


def is_remote(path: Any) -> bool:
    return str(path).startswith(SCHEME)


def join(base: str, *parts: str) -> str:
    """`base/part/...` for URLs and local paths alike."""
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def bucket_of(url: str) -> str:
    return url[len(SCHEME):].split("/", 1)[0]


def endpoint(endpoint_url: str = "") -> str:
    """The store's endpoint: the config's, else the environment's, else AWS's own ("")."""
    return endpoint_url or os.environ.get(ENDPOINT_ENV, "")


@functools.lru_cache(maxsize=8)
def _filesystem(endpoint_url: str):
    try:
        import s3fs
    except ImportError:
        raise StorageError("s3:// paths need the object-store extra: pip install -e \".[s3]\" "
                           "(fsspec and s3fs)") from None
    # A few quick attempts: a wrong endpoint must fail in seconds, not after minutes of retries.
    config = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3, "mode": "standard"}}
    return s3fs.S3FileSystem(endpoint_url=endpoint_url or None, config_kwargs=config,
                             skip_instance_cache=True)


def filesystem(endpoint_url: str = ""):
    """The s3fs filesystem for this endpoint (one per process and endpoint)."""
    return _filesystem(endpoint(endpoint_url))


def explain(err: BaseException, url: str, endpoint_url: str = "") -> StorageError:
    """The one-line form of an object-store failure on `url`."""
    name = type(err).__name__
    text = str(err)
    where = endpoint(endpoint_url) or "the AWS default endpoint"
    if name in ("NoCredentialsError", "PartialCredentialsError") or "Unable to locate credentials" in text:
        return StorageError(f"no credentials for {url}: {CREDENTIAL_HINT}")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                "ConnectionRefusedError", "ServerDisconnectedError") or "Could not connect" in text:
        return StorageError(f"cannot reach the object store at {where} for {url}: check {ENDPOINT_ENV} "
                            "or storage.endpoint_url")
    if isinstance(err, PermissionError) or "AccessDenied" in text or "InvalidAccessKeyId" in text \
            or "SignatureDoesNotMatch" in text:
        return StorageError(f"access denied to {url} at {where}: check the credentials in use "
                            f"({CREDENTIAL_HINT}) and that they may use bucket {bucket_of(url)}")
    if isinstance(err, FileNotFoundError) or "NoSuchBucket" in text or "NoSuchKey" in text:
        if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
            return StorageError(f"bucket {bucket_of(url)} does not exist at {where} ({url}); "
                                "check the URL or create the bucket")
        return StorageError(f"{url} does not exist at {where}; check the URL")
    return StorageError(f"{url}: {name}: {text.splitlines()[0] if text else 'object-store error'}")


def _call(url: str, endpoint_url: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except StorageError:
        raise
    except Exception as err:  # botocore, aiohttp and s3fs errors all end here, one line each
        if _mine(err):
            raise explain(err, url, endpoint_url) from None
        raise


def _mine(err: BaseException) -> bool:
    """Errors of the object-store stack (or the OS errors s3fs maps them to)."""
    module = type(err).__module__ or ""
    return isinstance(err, OSError) or module.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "s3fs")


def _key(url: str) -> str:
    return url[len(SCHEME):].rstrip("/")


def read_bytes(url: str, endpoint_url: str = "") -> bytes:
    fs = filesystem(endpoint_url)
    return _call(url, endpoint_url, fs.cat_file, _key(url))


def read_text(path: Any, endpoint_url: str = "") -> str:
    """A file's text, local or remote (UTF-8)."""
    if not is_remote(path):
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    return read_bytes(str(path), endpoint_url).decode("utf-8")


def write_bytes(url: str, data: bytes, endpoint_url: str = "") -> None:
    """One object, atomically: a reader sees the old object or the new one, never a part."""
    fs = filesystem(endpoint_url)
    _call(url, endpoint_url, fs.pipe_file, _key(url), data)


def is_file(url: str, endpoint_url: str = "") -> bool:
    fs = filesystem(endpoint_url)
    return _call(url, endpoint_url, fs.isfile, _key(url))


def check_bucket(url: str, endpoint_url: str = "") -> None:
    """Raises StorageError unless the bucket of `url` exists and these credentials can list it."""
    fs = filesystem(endpoint_url)
    bucket = bucket_of(url)
    try:
        fs.ls(bucket, refresh=True)
    except Exception as err:
        if not _mine(err):
            raise
        if isinstance(err, FileNotFoundError):
            raise StorageError(f"bucket {bucket} does not exist at "
                               f"{endpoint(endpoint_url) or 'the AWS default endpoint'} ({url}); "
                               "check the URL or create the bucket") from None
        raise explain(err, url, endpoint_url) from None


def listing(url: str, endpoint_url: str = "") -> dict[str, dict]:
    """The objects directly under `url`: {name: {"size": bytes, "etag": str}}. A missing
    prefix is an empty dict once the bucket is known to exist."""
    fs = filesystem(endpoint_url)
    check_bucket(url, endpoint_url)
    try:
        entries = fs.ls(_key(url), detail=True, refresh=True)
    except FileNotFoundError:
        return {}
    except Exception as err:
        if _mine(err):
            raise explain(err, url, endpoint_url) from None
        raise
    return {entry["name"].rsplit("/", 1)[-1]: {"size": int(entry.get("size") or 0),
                                                "etag": str(entry.get("ETag", "")).strip('"')}
            for entry in entries if entry.get("type") == "file"}


def download(url: str, local: str, endpoint_url: str = "") -> None:
    fs = filesystem(endpoint_url)
    _call(url, endpoint_url, fs.get_file, _key(url), local)


def upload(local: str, url: str, endpoint_url: str = "") -> None:
    """One file as one object (a single PUT or a multipart upload, complete or absent)."""
    fs = filesystem(endpoint_url)
    _call(url, endpoint_url, fs.put_file, local, _key(url))


def download_tree(url: str, local: str, endpoint_url: str = "") -> int:
    """Every object under `url` into the folder `local` (created); returns how many."""
    fs = filesystem(endpoint_url)
    prefix = _key(url)
    keys = _call(url, endpoint_url, fs.find, prefix)
    if not keys:
        raise StorageError(f"{url} holds no objects; check the URL (launch runs --run-root "
                           f"{url.rsplit('/', 1)[0]} lists the mirrored runs)")
    for key in keys:
        target = os.path.join(local, os.path.relpath(key, prefix))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _call(f"{SCHEME}{key}", endpoint_url, fs.get_file, key, target)
    return len(keys)


def read_index(mirror: str, endpoint_url: str = "") -> list[dict]:
    """Every run's entry in the results index of `mirror`, oldest first (merged on read)."""
    import json

    url = join(mirror, INDEX)
    entries = [json.loads(read_bytes(join(url, name), endpoint_url))
               for name in sorted(listing(url, endpoint_url)) if name.endswith(".json")]
    return sorted(entries, key=lambda e: (str(e.get("created", "")), str(e.get("run", ""))))


def read_head(url: str, size: int, endpoint_url: str = "") -> bytes:
    """The first `size` bytes of an object (one ranged GET), e.g. a large file's first line."""
    fs = filesystem(endpoint_url)
    return _call(url, endpoint_url, fs.cat_file, _key(url), 0, size)
