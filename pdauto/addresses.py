"""The address policy for outbound webhooks: which IP addresses pdauto may connect to.

Webhook URLs are typed by users, so a request must never reach the machines around
pdauto's own servers (server-side request forgery). The policy accepts public unicast
addresses only, unless an operator lists a network in PDAUTO_ALLOWED_NETWORKS. The
caller checks every address a host name resolves to and then connects to a checked
address, never to the name; see `pdauto.webhooks.Sender`.
"""

import ipaddress
import string

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_NETWORKS_SETTING = "PDAUTO_ALLOWED_NETWORKS"

# Special-purpose ranges from the IANA IPv4 and IPv6 special-purpose address
# registries (RFC 6890 and its updates), with the words used in error messages.
# The first match names the reason, so narrower ranges come before wider ones.
_REFUSED_IPV4 = [
    ("0.0.0.0/32", "the unspecified address"),
    ("0.0.0.0/8", 'a "this network" address'),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a shared address (carrier-grade NAT)"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.169.254/32", "the cloud metadata service address (link-local)"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "an IETF protocol assignment"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a deprecated 6to4 relay address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("240.0.0.0/4", "a reserved address"),
]

_REFUSED_IPV6 = [
    ("::/128", "the unspecified address"),
    ("::1/128", "a loopback address"),
    ("::/96", "a deprecated IPv4-compatible address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("100::/64", "a discard-only address"),
    ("2001::/32", "a Teredo tunnel address"),
    ("2001::/23", "an IETF protocol assignment"),
    ("2001:db8::/32", "a documentation address"),
    ("3fff::/20", "a documentation address"),
    ("fc00::/7", "a unique-local address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a deprecated site-local address"),
    ("ff00::/8", "a multicast address"),
]

_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")

_REFUSED_NETWORKS = {
    4: [(ipaddress.IPv4Network(net), words) for net, words in _REFUSED_IPV4],
    6: [(ipaddress.IPv6Network(net), words) for net, words in _REFUSED_IPV6],
}


class AddressNotAllowed(Exception):
    """A connection to this address is refused by the address policy."""

    def __init__(self, address, reason, host=None):
        self.address = str(address)
        self.reason = reason
        self.host = host
        super().__init__(self.address, reason, host)

    def __str__(self):
        if self.host and self.host != self.address:
            subject = f"{self.host} resolves to {self.address}, which is"
        else:
            subject = f"{self.address} is"
        return (
            f"address not allowed: {subject} {self.reason}. Webhooks go only to "
            f"public internet addresses unless {ALLOWED_NETWORKS_SETTING} lists "
            "the network."
        )


class AddressPolicy:
    """The public-addresses-only rule, widened by the operator's allowed networks."""

    def __init__(self, allowed_networks=()):
        self.allowed_networks = tuple(allowed_networks)

    @classmethod
    def from_strings(cls, networks):
        """Build a policy from PDAUTO_ALLOWED_NETWORKS entries such as "127.0.0.0/8".

        A single string is split on commas and whitespace. Raises ValueError naming
        the first invalid entry.
        """
        if isinstance(networks, str):
            networks = networks.replace(",", " ").split()
        parsed = []
        for entry in networks:
            entry = entry.strip()
            if not entry:
                continue
            try:
                parsed.append(ipaddress.ip_network(entry, strict=True))
            except ValueError as error:
                raise ValueError(
                    f"{ALLOWED_NETWORKS_SETTING} has an invalid entry {entry!r}: "
                    f"{error}. Write each network in CIDR form, such as "
                    "127.0.0.0/8 or ::1/128, separated by commas."
                ) from None
        return cls(parsed)

    def check(self, ip, host=None):
        """Raise AddressNotAllowed unless a webhook may connect to `ip`.

        `host` is the name that resolved to `ip`, used only in the message.
        """
        address = ip if isinstance(ip, IPAddress) else ipaddress.ip_address(ip)
        if self.is_allowed_network(address):
            return
        reason = refusal_reason(address)
        if reason is not None:
            raise AddressNotAllowed(address, reason, host)

    def is_allowed_network(self, address):
        # Only an IPv4-mapped address reaches its IPv4 host directly. NAT64 and
        # 6to4 addresses go through a gateway, so allowing 127.0.0.0/8 must not
        # let them through: the gateway may be anywhere.
        embedded = address.ipv4_mapped if address.version == 6 else None
        return any(
            candidate in network
            for network in self.allowed_networks
            for candidate in (address, embedded)
            if candidate is not None
        )


def embedded_ipv4(address):
    """Return the IPv4 address that an IPv6 address reaches, or None.

    IPv4-mapped (::ffff:a.b.c.d), well-known-prefix NAT64 (64:ff9b::a.b.c.d) and 6to4
    (2002:aabb:ccdd::) addresses all carry the IPv4 host they lead to.
    """
    if address.version != 6:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def refusal_reason(address):
    """Return why the policy refuses `address` without an allowed network, or None."""
    embedded = embedded_ipv4(address)
    if embedded is not None:
        inner = refusal_reason(embedded)
        if inner is None:
            return None
        return f"an IPv6 form of {embedded}, which is {inner}"

    for network, words in _REFUSED_NETWORKS[address.version]:
        if address in network:
            return words
    if address.version == 6 and address not in _IPV6_GLOBAL_UNICAST:
        return "a reserved address"
    return None


_HEX_DIGITS = frozenset(string.hexdigits)


def ends_in_number(host):
    """Tell whether a host must be read as an IPv4 address, as browsers read it.

    The WHATWG URL standard parses any host whose last label is a decimal or 0x
    number as IPv4, so "2130706433", "0x7f000001" and "127.1" all mean 127.0.0.1.
    """
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    last = labels[-1]
    if last.isascii() and last.isdigit():
        return True
    return last[:2] in ("0x", "0X") and all(char in _HEX_DIGITS for char in last[2:])


def parse_ipv4_host(host):
    """Parse an IPv4 host written in any form the WHATWG URL standard accepts.

    Parts may be decimal, octal (leading 0) or hexadecimal (0x), and the last part
    fills the remaining bytes, so "0177.1" is 127.0.0.1. Raises ValueError for a
    host that is not a valid IPv4 address in any of these forms.
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if len(parts) > 4:
        raise ValueError(f"{host} has more than four parts")

    numbers = [_parse_ipv4_part(part, host) for part in parts]
    *leading, last = numbers
    if any(number > 255 for number in leading):
        raise ValueError(f"{host} has a part greater than 255")
    if last >= 256 ** (5 - len(numbers)):
        raise ValueError(f"{host} is out of the IPv4 range")

    value = last
    for index, number in enumerate(leading):
        value += number * 256 ** (3 - index)
    return ipaddress.IPv4Address(value)


def _parse_ipv4_part(part, host):
    if part == "":
        raise ValueError(f"{host} has an empty part")
    if part[:2] in ("0x", "0X"):
        digits, base = part[2:] or "0", 16
    elif len(part) > 1 and part.startswith("0"):
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    if not digits.isascii() or not digits.isalnum():
        raise ValueError(f"{host} has an invalid part {part!r}")
    try:
        return int(digits, base)
    except ValueError:
        raise ValueError(f"{host} has an invalid part {part!r}") from None
