"""Where rowcall may send a webhook a user named: https, to public addresses only (no SSRF).

An upload names its `on-done-url`, so anyone who can upload could aim the notifier at the
instance metadata service (169.254.169.254, fd00:ec2::254), at hosts inside the VPC or at
loopback, and read the answer's status or time it. So a URL is checked when its batch is uploaded
and again at every delivery (DNS can change in between). A delivery resolves the name once, checks
every address it got, and connects to the address it checked: a second lookup would let a
rebinding DNS server answer "public" to the check and "169.254.169.254" to the connect. The
original host name stays in the Host header and is the TLS server name, so the certificate is
still verified against the name. Redirects are never followed.

Only configuration lets plain http and loopback in (`ALLOW_LOOPBACK_WEBHOOKS`, which the local
stack sets through the template's `AllowLoopbackWebhooks` parameter); nothing here knows where it
runs.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]
"""host, port -> the addresses it resolves to; raises OSError when it resolves to none."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address getaddrinfo gives, IPv4 and IPv6, in its preference order. It also reads the
    numeric forms inet_aton accepts (2130706433, 0x7f.1, 0177.0.0.1, 127.1), which is why a host
    is always checked by the addresses it resolves to, never by how it is spelled."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _nets(*entries: tuple[str, str]) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]:
    return tuple((ipaddress.ip_network(net), what) for net, what in entries)


# IANA's special-purpose registries, each range named so a refusal says what the address is.
_FORBIDDEN_V4 = _nets(
    ("0.0.0.0/8", "a 'this network' address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "an IETF protocol assignment"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a 6to4 relay address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
)
_FORBIDDEN_V6 = _nets(
    ("::/128", "the unspecified address"),
    ("::1/128", "a loopback address"),
    # NAT64 and 6to4 carry an IPv4 address a gateway would reach for us (AWS offers DNS64 and
    # NAT64): refused outright rather than trusting what the gateway routes to.
    ("64:ff9b::/96", "a NAT64 address"),
    ("64:ff9b:1::/48", "a NAT64 address"),
    ("100::/64", "a discard-only address"),
    ("2001::/23", "an IETF protocol assignment (Teredo, ...)"),
    ("2001:db8::/32", "a documentation address"),
    ("2002::/16", "a 6to4 address"),
    ("3fff::/20", "a documentation address"),
    ("5f00::/16", "an SRv6 address"),
    ("fc00::/7", "a unique-local address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
)
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_LOOPBACK = _nets(("127.0.0.0/8", "loopback"), ("::1/128", "loopback"))

# Named in refusals; every one of them is inside a forbidden range above anyway.
CLOUD_METADATA = {
    ipaddress.ip_address("169.254.169.254"): "cloud instance metadata",
    ipaddress.ip_address("169.254.170.2"): "ECS task metadata",
    ipaddress.ip_address("169.254.169.253"): "the VPC's DNS resolver",
    ipaddress.ip_address("169.254.169.123"): "Amazon Time Sync",
    ipaddress.ip_address("fd00:ec2::254"): "cloud instance metadata",
    ipaddress.ip_address("fd00:ec2::253"): "the VPC's DNS resolver",
    ipaddress.ip_address("fd00:ec2::23"): "the VPC's DNS resolver",
    ipaddress.ip_address("100.100.100.200"): "cloud instance metadata",
}


def _plain(address: IPAddress) -> IPAddress:
    """Without an IPv6 zone (fe80::1%eth0): the ranges and names are of the address itself."""
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return ipaddress.IPv6Address(address.packed)
    return address


def is_loopback(address: IPAddress) -> bool:
    address = _plain(address)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net, _ in _LOOPBACK)


def address_problem(address: IPAddress, *, allow_loopback: bool = False) -> str | None:
    """None when a webhook may go to `address`; otherwise what the address is."""
    address = _plain(address)
    if allow_loopback and is_loopback(address):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:a.b.c.d reaches a.b.c.d over IPv4 on a dual-stack socket.
        inner = address_problem(address.ipv4_mapped, allow_loopback=allow_loopback)
        return None if inner is None else f"an IPv4-mapped {inner.removeprefix('a ').removeprefix('an ')}"
    table = _FORBIDDEN_V4 if isinstance(address, ipaddress.IPv4Address) else _FORBIDDEN_V6
    what = next((what for net, what in table if address in net), None)
    if what is None and isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST_V6:
        what = "a reserved address"  # outside 2000::/3 nothing is allocated for unicast
    if what is None and not address.is_global:
        what = "not a global address"  # belt and braces: Python's own special-purpose registry
    if what is None:
        return None
    metadata = CLOUD_METADATA.get(address)
    return f"{what} ({metadata})" if metadata else what


class ForbiddenDestination(ValueError):
    """The URL may never be sent to: wrong scheme, or an address that is not public. Permanent:
    retrying would not change the answer (unless DNS changes, which is an attacker's game)."""


@dataclass(frozen=True)
class Destination:
    """A URL's host resolved once, every address checked: connect only to these."""

    scheme: str
    host: str
    """ASCII (IDNA) host name, or the IP literal as written."""
    port: int
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True)
class DestinationPolicy:
    """Which URLs a user-named webhook may go to. `allow_loopback` (configuration only) admits
    loopback addresses, and plain http to them; everything else must be https to a public address."""

    allow_loopback: bool = False
    resolver: Resolver = field(default=system_resolver)

    def _scheme_problem(self, scheme: str) -> str | None:
        if scheme == "https" or (scheme == "http" and self.allow_loopback):
            return None
        if self.allow_loopback:
            return f"must be https or http to a loopback address, not {scheme}"
        return f"must be https, not {scheme}"

    def resolve(self, url: httpx.URL) -> Destination:
        """Every address the URL's host has, each allowed; raises ForbiddenDestination, or OSError
        when the name does not resolve. Messages name the host, never the path or query (which
        may carry the receiver's own token)."""
        scheme = url.scheme
        problem = self._scheme_problem(scheme)
        if problem is not None:
            raise ForbiddenDestination(problem)
        host = url.raw_host.decode("ascii")
        if not host:
            raise ForbiddenDestination("has no host")
        port = url.port or (443 if scheme == "https" else 80)
        try:
            addresses: tuple[IPAddress, ...] = (ipaddress.ip_address(host),)
            literal = True
        except ValueError:
            addresses = tuple(ipaddress.ip_address(a) for a in self.resolver(host, port))
            literal = False
            if not addresses:
                raise OSError(f"{host} resolved to no address") from None
        for address in addresses:
            where = f"host {host}" if literal else f"host {host} resolves to {address}, which"
            problem = address_problem(address, allow_loopback=self.allow_loopback)
            if problem is not None:
                raise ForbiddenDestination(f"{where} is {problem}")
            if scheme == "http" and not is_loopback(address):
                raise ForbiddenDestination(
                    f"must be https: plain http only to a loopback address, and {where} is not one"
                )
        return Destination(scheme=scheme, host=host, port=port, addresses=addresses)

    def upload_problem(self, url: str) -> str | None:
        """Checked when a batch is uploaded: None, or why its on-done URL is refused. A name that
        does not resolve now passes over https (DNS may be down a moment, or not set up yet):
        every delivery checks again and never sends to a name it could not check."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:  # e.g. 0177.0.0.1: an octal IPv4 httpx will not send to
            return f"is not a URL that can be sent to ({exc})"
        try:
            self.resolve(parsed)
        except ForbiddenDestination as exc:
            return str(exc)
        except (OSError, UnicodeError, ValueError):
            if parsed.scheme == "http":
                return "must be https: plain http only to a loopback address, and the host did not resolve"
        return None


class PinnedTransport(httpx.BaseTransport):
    """Sends each request to an address the policy checked, resolved for that request alone.

    The request goes to the IP itself, carrying the original Host header, with the host name as
    TLS server name (httpcore's `sni_hostname` request extension), so the certificate is verified
    against the name as usual. Raises ForbiddenDestination (not an httpx error: nothing was sent)
    for a URL the policy refuses, and httpx.ConnectError when the name does not resolve.
    """

    def __init__(self, policy: DestinationPolicy, *, verify: ssl.SSLContext | bool = True) -> None:
        self._policy = policy
        # No keep-alive: the pool is keyed by IP, and a connection opened (and its certificate
        # verified) for one host name must never carry a request for another name on that IP.
        self._inner = httpx.HTTPTransport(verify=verify, limits=httpx.Limits(max_keepalive_connections=0))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            destination = self._policy.resolve(request.url)
        except (OSError, UnicodeError) as exc:
            raise httpx.ConnectError(
                f"the host did not resolve ({type(exc).__name__})", request=request
            ) from exc
        body = request.read()
        last: httpx.TransportError | None = None
        for address in destination.addresses:
            pinned = httpx.Request(
                request.method,
                request.url.copy_with(host=str(address)),
                headers=request.headers,  # Host: the name, as the client set it from the URL
                content=body,
                extensions={**request.extensions, "sni_hostname": destination.host},
            )
            try:
                return self._inner.handle_request(pinned)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = exc  # this address is unreachable (e.g. IPv6 without a route): the next one
        assert last is not None
        raise last

    def close(self) -> None:
        self._inner.close()


def webhook_client(
    policy: DestinationPolicy, *, timeout_s: float = 10.0, verify: ssl.SSLContext | bool = True
) -> httpx.Client:
    """An httpx client for user-named URLs: pinned to checked addresses, never following a
    redirect (a 3xx to http://169.254.169.254/ is just a failed delivery), no proxy from the
    environment (a proxy would resolve the name again)."""
    return httpx.Client(
        transport=PinnedTransport(policy, verify=verify), timeout=timeout_s, follow_redirects=False
    )
