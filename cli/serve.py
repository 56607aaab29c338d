"""``vlatrain serve``: a checkpoint behind a WebSocket policy server (docs/deploy.md)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path

import click

from vladata.errors import VladataError

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def read_token(path: str) -> str:
    """The token in file ``path`` (surrounding whitespace removed); refuses an empty one."""
    token = Path(path).read_text().strip()
    if not token:
        raise click.BadParameter(f"{path} is empty: put a secret (e.g. `openssl rand -hex 32`) in "
                                 "it", param_hint="--token")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise click.BadParameter(f"{path}: the token must be one line of printable characters "
                                 "without spaces", param_hint="--token")
    return token


def _is_loopback(host: str) -> bool:
    try:
        return host in LOOPBACK or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("serve")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on: loopback unless told otherwise (0.0.0.0: every one).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="TCP port (0: any free one, printed).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--token", "token_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File holding a secret; connections must send `Authorization: Bearer <it>`.")
@click.option("--max-message-bytes", type=click.IntRange(1024), default=8 << 20,
              show_default=True, help="Larger messages close their connection (code 1009).")
@click.option("--max-batch", type=click.IntRange(1), default=16, show_default=True,
              help="Requests of concurrent sessions run as one batch, at most this many (1: off).")
@click.option("--batch-wait-ms", type=click.FloatRange(0), default=0.0, show_default=True,
              help="After the first request of a batch, wait this long for more (0: batch what "
                   "queued while the previous batch ran).")
@click.option("--max-sessions", type=click.IntRange(1), default=256, show_default=True)
@click.option("--max-connections", type=click.IntRange(1), default=64, show_default=True)
@click.option("--request-timeout", type=click.FloatRange(0, min_open=True), default=30.0,
              show_default=True, help="Seconds before a request is answered with a timeout error.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="Torch intra-op threads on a CPU (more spin against each other on a busy "
                   "machine; batching is where a server gains).")
@click.option("--idle-timeout", type=click.FloatRange(0), default=600.0, show_default=True,
              help="Close a connection silent for this many seconds (0: never).")
@click.option("--execute", type=click.IntRange(1), default=None,
              help="Execute the first K actions of each predicted chunk open loop (default: "
                   "re-plan at every step).")
@click.option("--ensemble", type=click.FloatRange(0), default=None, metavar="M",
              help="Temporal ensembling of overlapping chunks as in ACT (instead of --execute).")
def command(checkpoint, host, port, device, token_file, max_message_bytes, max_batch,
            batch_wait_ms, max_sessions, max_connections, request_timeout, threads, idle_timeout,
            execute, ensemble):
    """Serve CHECKPOINT over WebSocket (msgpack + numpy) to robots and simulator workers.

    \b
    vlatrain serve runs/mt10/checkpoints/best.pt --device cuda
    vlatrain serve best.pt --host 0.0.0.0 --port 8000 --token secret.txt
    vlatrain rollout --policy ws://127.0.0.1:8000 --tasks mt10
    """
    try:
        from vlatrain.serving.runtime import PolicyRuntime
        from vlatrain.serving.server import PolicyServer, ServeConfig
    except ImportError as e:
        raise click.ClickException(f'{e}: pip install -e ".[serve]"') from None
    token = read_token(token_file) if token_file else None
    import torch
    torch.set_num_threads(threads)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise click.BadParameter("no CUDA device is available here: use --device cpu",
                                     param_hint="--device")
    if not _is_loopback(host) and token is None:
        click.echo(f"warning: serving on {host} without --token: anyone who reaches the port can "
                   "drive the policy", err=True)
    config = ServeConfig(host=host, port=port, token=token, max_message_bytes=max_message_bytes,
                         max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                         max_sessions=max_sessions, max_connections=max_connections,
                         request_timeout_s=request_timeout, idle_timeout_s=idle_timeout or None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        runtime = PolicyRuntime.load(checkpoint, None if device == "auto" else device,
                                     execute=execute, ensemble=ensemble)
        server = PolicyServer(runtime, config)

        def ready(url: str) -> None:
            click.echo(f"serving {checkpoint} ({runtime.policy!r}) on {url}  "
                       f"(liveness: {url.replace('ws', 'http', 1)}/healthz)", err=True)

        asyncio.run(server.serve_forever(ready))
    except (VladataError, OSError) as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
