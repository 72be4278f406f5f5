"""Where a user-named webhook may go: the address policy, and a client that connects only to the
address it checked (real sockets on loopback, the resolver injected)."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import re
import ssl
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rowcall.outbound import (
    DestinationPolicy,
    ForbiddenDestination,
    address_problem,
    system_resolver,
    webhook_client,
)
from rowcall_local.webhook_receiver import WebhookReceiver

STRICT = DestinationPolicy()
LOCAL = DestinationPolicy(allow_loopback=True)


class FakeDns:
    """Answers from a table, counting lookups; a name not in it does not resolve."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append(host)
        if host not in self.table:
            raise OSError(f"{host}: Name or service not known")
        return self.table[host]


FORBIDDEN = [
    # IPv4
    ("0.0.0.0", "'this network'"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "shared"),
    ("100.100.100.200", "cloud instance metadata"),
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("169.254.0.1", "link-local"),
    ("169.254.169.254", "link-local address (cloud instance metadata)"),
    ("169.254.170.2", "ECS task metadata"),
    ("192.0.0.192", "IETF protocol"),
    ("192.0.2.1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("203.0.113.9", "documentation"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    # IPv6
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fe80::1", "link-local"),
    ("fe80::1%2", "link-local"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fd00:ec2::254", "unique-local address (cloud instance metadata)"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff05::2", "multicast"),
    ("2001:db8::1", "documentation"),
    ("2001:0:4136:e378::1", "Teredo"),
    ("2002:a9fe:a9fe::1", "6to4"),
    ("64:ff9b::a9fe:a9fe", "NAT64"),
    ("100::1", "discard-only"),
    ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
    ("4000::1", "reserved"),  # outside 2000::/3
    # IPv4-mapped IPv6: reaches the IPv4 address on a dual-stack socket
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:169.254.169.254", "IPv4-mapped link-local address (cloud instance metadata)"),
    ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("::ffff:a9fe:a9fe", "IPv4-mapped link-local"),
]
PUBLIC = [
    "8.8.8.8",
    "93.184.216.34",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "2a00:1450:4001::200e",
    "::ffff:8.8.8.8",
]


@pytest.mark.parametrize(("address", "what"), FORBIDDEN)
def test_every_non_public_address_class_is_refused_by_name(address: str, what: str) -> None:
    problem = address_problem(ipaddress.ip_address(address))
    assert problem is not None and what in problem
    with pytest.raises(ForbiddenDestination, match=re.escape(what)):
        host = f"[{address}]" if ":" in address else address
        STRICT.resolve(httpx.URL(f"https://{host}/done"))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"])
def test_loopback_is_allowed_only_by_configuration(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address), allow_loopback=True) is None
    assert address_problem(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["0.0.0.0", "10.0.0.1", "169.254.169.254", "fd00:ec2::254", "::"])
def test_allowing_loopback_allows_nothing_else(address: str) -> None:
    # 0.0.0.0 reaches the local host on Linux, but it is not loopback: still refused.
    assert address_problem(ipaddress.ip_address(address), allow_loopback=True) is not None


@pytest.mark.parametrize(
    ("host", "refusal"),
    [
        ("2130706433", "resolves to 127.0.0.1"),  # decimal
        ("0x7f000001", "resolves to 127.0.0.1"),  # hex
        ("0x7f.1", "resolves to 127.0.0.1"),
        ("127.1", "resolves to 127.0.0.1"),
        ("0", "resolves to 0.0.0.0"),
        ("2852039166", "resolves to 169.254.169.254"),  # decimal metadata address
        ("0xa9.0xfe.0xa9.0xfe", "resolves to 169.254.169.254"),
        ("localhost", "resolves to 127.0.0.1"),
        # Dotted forms with leading zeros (octal to inet_aton) are not even a URL to httpx.
        ("0177.0.0.1", "Invalid IPv4 address"),
        ("0251.0376.0251.0376", "Invalid IPv4 address"),
        ("127.000.000.001", "Invalid IPv4 address"),
    ],
)
def test_numeric_spellings_are_judged_by_what_the_system_resolver_makes_of_them(
    host: str, refusal: str
) -> None:
    assert system_resolver(host, 443), f"the system resolver gave nothing for {host}"
    problem = STRICT.upload_problem(f"https://{host}/done")
    assert problem is not None and refusal in problem


def test_a_name_with_one_forbidden_address_among_public_ones_is_refused() -> None:
    dns = FakeDns({"hooks.test": ["93.184.216.34", "2606:4700:4700::1111", "10.0.0.7"]})
    policy = DestinationPolicy(resolver=dns)
    with pytest.raises(
        ForbiddenDestination, match=re.escape("host hooks.test resolves to 10.0.0.7, which is a private")
    ):
        policy.resolve(httpx.URL("https://hooks.test/done"))
    public = DestinationPolicy(resolver=FakeDns({"hooks.test": ["93.184.216.34", "2606:4700:4700::1111"]}))
    found = public.resolve(httpx.URL("https://hooks.test:8443/done?token=x"))
    assert (found.host, found.port, [str(a) for a in found.addresses]) == (
        "hooks.test",
        8443,
        ["93.184.216.34", "2606:4700:4700::1111"],
    )


@pytest.mark.parametrize(
    ("policy", "url", "problem"),
    [
        (STRICT, "http://93.184.216.34/done", "must be https, not http"),
        (STRICT, "http://127.0.0.1:8000/done", "must be https, not http"),
        (STRICT, "ftp://hooks.test/done", "must be https, not ftp"),
        (LOCAL, "ftp://127.0.0.1/done", "must be https or http to a loopback address, not ftp"),
        (LOCAL, "http://93.184.216.34/done", "plain http only to a loopback address"),
        (LOCAL, "http://hooks.test/done", "plain http only to a loopback address"),
        (LOCAL, "http://192.168.0.10/done", "private"),
        (STRICT, "https://169.254.169.254/latest/meta-data/", "host 169.254.169.254 is a link-local"),
        (STRICT, "https://[fd00:ec2::254]/latest/meta-data/", "cloud instance metadata"),
        (STRICT, "https://localhost/done", "host localhost resolves to 127.0.0.1, which is a loopback"),
        (STRICT, "https://internal.test/done", "resolves to 172.20.0.5, which is a private"),
        (STRICT, "https://hooks.test/done", None),
        (STRICT, "https://unknown.test/done", None),  # does not resolve now: delivery checks again
        (LOCAL, "http://127.0.0.1:8000/done", None),
        (LOCAL, "http://[::1]:8000/done", None),
        (LOCAL, "http://localhost:8000/done", None),
        (LOCAL, "https://127.0.0.1:8000/done", None),
    ],
)
def test_upload_check(policy: DestinationPolicy, url: str, problem: str | None) -> None:
    dns = FakeDns(
        {"hooks.test": ["93.184.216.34"], "internal.test": ["172.20.0.5"], "localhost": ["127.0.0.1"]}
    )
    policy = DestinationPolicy(allow_loopback=policy.allow_loopback, resolver=dns)
    found = policy.upload_problem(url)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
        assert "meta-data" not in found and "/done" not in found  # names the host, not the path


# -- the client: it connects to the address it checked ------------------------------------------


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver()
    yield hook
    hook.close()


def test_the_request_goes_to_the_checked_address_with_the_name_as_host(receiver: WebhookReceiver) -> None:
    port = receiver.url.rsplit(":", 1)[1]
    dns = FakeDns({"hooks.test": ["127.0.0.1"]})
    with webhook_client(DestinationPolicy(allow_loopback=True, resolver=dns)) as client:
        response = client.post(f"http://hooks.test:{port}/done?x=1", content=b"{}")
    assert response.status_code == 200
    (got,) = receiver.got
    assert (got.path, got.headers["host"]) == ("/done?x=1", f"hooks.test:{port}")
    # Resolved once, by us: hooks.test means nothing to the system resolver, so the connection
    # can only have gone to the address that was checked.
    assert dns.lookups == ["hooks.test"]


def test_dns_that_changes_after_the_upload_check_is_checked_again_and_nothing_is_sent(
    receiver: WebhookReceiver,
) -> None:
    port = receiver.url.rsplit(":", 1)[1]
    dns = FakeDns({"hooks.test": ["127.0.0.1"]})
    policy = DestinationPolicy(allow_loopback=True, resolver=dns)
    assert policy.upload_problem(f"http://hooks.test:{port}/done") is None
    dns.table["hooks.test"] = ["169.254.169.254"]  # rebound
    with webhook_client(policy) as client, pytest.raises(ForbiddenDestination, match=r"169\.254\.169\.254"):
        client.post(f"http://hooks.test:{port}/done", content=b"{}")
    assert receiver.got == []


def test_an_unreachable_address_falls_back_to_the_next_checked_one(receiver: WebhookReceiver) -> None:
    port = receiver.url.rsplit(":", 1)[1]
    dns = FakeDns({"hooks.test": ["127.0.0.2", "127.0.0.1"]})  # nothing listens on 127.0.0.2
    with webhook_client(DestinationPolicy(allow_loopback=True, resolver=dns)) as client:
        assert client.post(f"http://hooks.test:{port}/done", content=b"{}").status_code == 200
    assert len(receiver.got) == 1


def test_a_name_that_does_not_resolve_is_a_connect_error_worth_retrying() -> None:
    with webhook_client(DestinationPolicy(resolver=FakeDns({}))) as client, pytest.raises(httpx.ConnectError):
        client.post("https://gone.test/done", content=b"{}")


class _Redirecting(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_POST(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(302)
        self.send_header("location", "http://169.254.169.254/latest/meta-data/")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_redirect_is_not_followed() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with webhook_client(LOCAL) as client:
            response = client.post(f"http://127.0.0.1:{server.server_address[1]}/done", content=b"{}")
        assert response.status_code == 302 and response.next_request is not None
        assert _Redirecting.hits == ["/done"]
    finally:
        server.shutdown()
        server.server_close()


# -- TLS: the certificate is verified against the name, though the connection goes to the IP ----


def _certificate(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class _TlsReceiver:
    """An https receiver on 127.0.0.1 presenting a certificate for one name; records SNI and Host."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.server_names: list[str | None] = []
        self.hosts: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.hosts.append(self.headers.get("host"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.sni_callback = lambda _sock, name, _ctx: outer.server_names.append(name)  # type: ignore[assignment,func-returns-value]
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.port = self._server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_tls_goes_to_the_pinned_address_and_verifies_the_certificate_against_the_name(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path, "hooks.test")
    tls = _TlsReceiver(cert, key)
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        dns = FakeDns({"hooks.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
        policy = DestinationPolicy(allow_loopback=True, resolver=dns)
        with webhook_client(policy, verify=trust) as client:
            assert client.post(f"https://hooks.test:{tls.port}/done", content=b"{}").status_code == 204
            # The same address under a name the certificate does not cover: refused by TLS.
            with pytest.raises(httpx.ConnectError, match=r"(?i)certificate|hostname"):
                client.post(f"https://other.test:{tls.port}/done", content=b"{}")
        assert tls.server_names[0] == "hooks.test" and tls.hosts == [f"hooks.test:{tls.port}"]
    finally:
        tls.close()
