"""The real docker-registry with ``auth: token`` and a token server for it (test helpers).

The registry trusts a throw-away CA; the token server issues RS256 JWTs signed
with that CA's key (``openssl dgst -sha256 -sign``), with the certificate in
the ``x5c`` header, granting what the requested scope asks for.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from doras_oras.testing.registry import RegistryServer, TLSFiles

SERVICE = "doras-oras-test-registry"
ISSUER = "doras-oras-test-issuer"
USERS = {"alice": "wonderland"}
REFRESH_TOKENS = {"refresh-alice-1": "alice"}
"""Identity tokens (OAuth2 refresh tokens) the issuer takes at ``POST /token``, and their user."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class JWTIssuer(threading.Thread):
    """``GET /token?service=&scope=`` with basic auth → ``{"token": <RS256 JWT>}``; ``POST /token`` with the
    form ``grant_type=refresh_token&refresh_token=&service=&scope=`` → ``{"access_token": ...}``."""

    def __init__(self, keys: TLSFiles) -> None:
        super().__init__(daemon=True)
        self.keys = keys
        der = subprocess.run(["openssl", "x509", "-in", str(keys.ca_cert), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.requests: list[tuple[str, str | None]] = []
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                issuer.requests.append((self.path, auth))
                user = None
                if auth and auth.startswith("Basic "):
                    name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    user = name if USERS.get(name) == password else None
                if user is None:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                scopes = parse_qs(urlsplit(self.path).query).get("scope", [])
                body = json.dumps({"token": issuer.sign(user, scopes), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(min(length, 65536)).decode())
                issuer.requests.append((f"POST {self.path}", None))
                user = REFRESH_TOKENS.get(form.get("refresh_token", [""])[0])
                if form.get("grant_type") != ["refresh_token"] or user is None:
                    self.send_response(400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"access_token": issuer.sign(user, form.get("scope", [])),
                                   "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def run(self) -> None:
        self.server.serve_forever(poll_interval=0.05)

    def sign(self, user: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": f"{user}-{now}-{len(self.requests)}", "access": access}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.keys.ca_cert.with_name("ca.key"))],
            input=signing_input.encode(), check=True, capture_output=True,
        ).stdout
        return f"{signing_input}.{b64url(signature)}"


class TokenRegistry(RegistryServer):
    """The real registry with ``auth: token`` trusting ``issuer``."""

    def __init__(self, issuer: JWTIssuer) -> None:
        super().__init__()
        self.issuer = issuer

    def _config(self) -> str:
        return super()._config() + (
            "auth:\n  token:\n"
            f"    realm: {self.issuer.realm}\n"
            f"    service: {SERVICE}\n"
            f"    issuer: {ISSUER}\n"
            f"    rootcertbundle: {self.issuer.keys.ca_cert}\n"
        )
