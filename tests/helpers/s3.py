"""A real S3-compatible server on loopback (moto's), for tests of ``s3://`` stores and streams."""

from __future__ import annotations

import contextlib
import socket

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def loopback_s3(bucket: str, unset=()):
    """Start moto's server on a free loopback port, point the ``AWS_*`` variables at it (child
    processes such as Ray nodes inherit them), create ``bucket``; yield an s3fs filesystem.
    ``unset``: further variables removed for the duration. Everything is undone on exit."""
    from moto.server import ThreadedMotoServer
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    mp = pytest.MonkeyPatch()
    for k, v in {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
        mp.setenv(k, v)
    for k in unset:
        mp.delenv(k, raising=False)
    import fsspec
    fsspec.filesystem("s3").clear_instance_cache()
    fs = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False)
    fs.mkdir(bucket)
    try:
        yield fs
    finally:
        mp.undo()
        server.stop()
