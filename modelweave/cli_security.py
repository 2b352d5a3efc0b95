"""Security options of `modelweave run` / `build`: token auth, the exposure rule, TLS files."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable
from typing import Any

import click

from modelweave.errors import ModelweaveError
from modelweave.spec import GraphSpec


def edge_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Adds the security options shared by `run` and `build`."""
    options = [
        click.option("--auth-tokens", type=click.Path(dir_okay=False),
                     help="file of 'name:token' lines; HTTP and gRPC then need 'authorization: Bearer <token>'"),
        click.option("--insecure", is_flag=True, help="allow a non-loopback --host without --auth-tokens"),
        click.option("--tls-cert", type=click.Path(dir_okay=False), help="PEM certificate: serve HTTPS"),
        click.option("--tls-key", type=click.Path(dir_okay=False), help="PEM private key of --tls-cert"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def secure(graphs: list[GraphSpec], host: str, auth_tokens: str | None, insecure: bool, tls_cert: str | None,
            tls_key: str | None) -> tuple[list[GraphSpec], dict[str, str]]:
    """Applies --auth-tokens (digests into each graph's ingress) and TLS; exits 2 on an unsafe setup.

    Returns:
        The graphs (with ``ingress.auth`` set when tokens were given) and the HTTP TLS options.
    """
    from modelweave.auth import AuthSettings, exposure_problem, load_token_file

    problem = exposure_problem(host, authenticated=bool(auth_tokens), insecure=insecure)
    if problem:
        click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    if bool(tls_cert) != bool(tls_key):
        click.echo("error: --tls-cert and --tls-key go together", err=True)
        sys.exit(2)
    tls: dict[str, str] = {}
    for key, path in (("ssl_certfile", tls_cert), ("ssl_keyfile", tls_key)):
        if path:
            if not pathlib.Path(path).is_file():
                click.echo(f"error: {path} does not exist", err=True)
                sys.exit(2)
            tls[key] = str(pathlib.Path(path).resolve())  # Serve's proxies open it, from their own cwd
    if not auth_tokens:
        return graphs, tls
    try:
        auth = AuthSettings(tokens=load_token_file(auth_tokens))
    except ModelweaveError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    secured = []
    for spec in graphs:
        spec = spec.model_copy(deep=True)
        spec.ingress.auth = auth
        secured.append(spec)
    return secured, tls
