"""The address policy on its own: which IP addresses a webhook may connect to."""

import ipaddress

import pytest

from pdauto.addresses import (
    AddressNotAllowed,
    AddressPolicy,
    ends_in_number,
    parse_ipv4_host,
)

LOOPBACK_NETWORKS = ["127.0.0.0/8", "::1/128"]

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"),
    ("10.0.0.5", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("169.254.169.254", "metadata"),
    ("169.254.1.1", "link-local"),
    ("192.0.0.8", "IETF"),
    ("192.0.2.1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "IPv6 form of 127.0.0.1"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "metadata"),
    ("::127.0.0.1", "IPv4-compatible"),
    ("64:ff9b::7f00:1", "IPv6 form of 127.0.0.1"),
    ("64:ff9b::a9fe:a9fe", "metadata"),
    ("64:ff9b:1::a00:1", "NAT64"),
    ("2002:7f00:1::1", "IPv6 form of 127.0.0.1"),
    ("2002:a00:5::1", "private"),
    ("2001::1", "Teredo"),
    ("2001:db8::1", "documentation"),
    ("100::1", "discard"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fe80::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("4000::1", "reserved"),
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "11.0.0.1",
    "100.128.0.1",
    "172.32.0.1",
    "192.169.0.1",
    "2606:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize(("address", "words"), REFUSED)
def test_policy_refuses_special_address(address, words):
    policy = AddressPolicy.from_strings([])

    with pytest.raises(AddressNotAllowed) as refused:
        policy.check(address)

    shown = ipaddress.ip_address(address)
    assert words in str(refused.value)
    assert str(refused.value).startswith(f"address not allowed: {shown} is ")


@pytest.mark.parametrize("address", PUBLIC)
def test_policy_allows_public_address(address):
    AddressPolicy.from_strings([]).check(address)


def test_message_names_setting():
    with pytest.raises(AddressNotAllowed) as refused:
        AddressPolicy.from_strings([]).check("10.0.0.5")

    message = str(refused.value)
    assert message.startswith("address not allowed: 10.0.0.5 is a private address.")
    assert "PDAUTO_ALLOWED_NETWORKS" in message


def test_message_names_host():
    with pytest.raises(AddressNotAllowed) as refused:
        AddressPolicy.from_strings([]).check("127.0.0.1", host="hooks.example.test")

    assert "hooks.example.test resolves to 127.0.0.1" in str(refused.value)
    assert refused.value.address == "127.0.0.1"
    assert refused.value.host == "hooks.example.test"


def test_check_accepts_address_objects():
    with pytest.raises(AddressNotAllowed):
        AddressPolicy.from_strings([]).check(ipaddress.ip_address("::1"))


@pytest.mark.parametrize("address", ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"])
def test_allowed_networks_let_loopback_through(address):
    AddressPolicy.from_strings(LOOPBACK_NETWORKS).check(address)


@pytest.mark.parametrize(
    "address", ["10.0.0.5", "169.254.169.254", "0.0.0.0", "fe80::1", "::ffff:10.0.0.1"]
)
def test_allowed_networks_refuse_the_rest(address):
    with pytest.raises(AddressNotAllowed):
        AddressPolicy.from_strings(LOOPBACK_NETWORKS).check(address)


@pytest.mark.parametrize("address", ["64:ff9b::7f00:1", "2002:7f00:1::"])
def test_gateway_forms_not_allowed_by_loopback(address):
    """NAT64 and 6to4 forms of 127.0.0.1 lead to a gateway, not to this machine."""
    with pytest.raises(AddressNotAllowed):
        AddressPolicy.from_strings(LOOPBACK_NETWORKS).check(address)


def test_from_strings_splits_text():
    policy = AddressPolicy.from_strings("127.0.0.0/8, ::1/128")

    assert [str(network) for network in policy.allowed_networks] == LOOPBACK_NETWORKS


def test_from_strings_skips_blank_entries():
    assert AddressPolicy.from_strings(["", "  "]).allowed_networks == ()


def test_from_strings_accepts_single_address():
    policy = AddressPolicy.from_strings(["10.1.2.3"])

    policy.check("10.1.2.3")
    with pytest.raises(AddressNotAllowed):
        policy.check("10.1.2.4")


@pytest.mark.parametrize("entry", ["127.0.0.1/8", "not-a-network", "10.0.0.0/33"])
def test_from_strings_rejects_bad_entry(entry):
    with pytest.raises(ValueError) as error:
        AddressPolicy.from_strings(["::1/128", entry])

    assert repr(entry) in str(error.value)
    assert "PDAUTO_ALLOWED_NETWORKS" in str(error.value)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0x", "0.0.0.0"),
        ("2852039166", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("012.0.0.5", "10.0.0.5"),
    ],
)
def test_parse_ipv4_host_spellings(host, expected):
    assert str(parse_ipv4_host(host)) == expected


@pytest.mark.parametrize(
    "host", ["256.0.0.1", "1.2.3.4.5", "0x1g", "08", "1..2", "4294967296", "1.2.3.256"]
)
def test_parse_ipv4_host_rejects_invalid(host):
    with pytest.raises(ValueError):
        parse_ipv4_host(host)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.1", True),
        ("2130706433", True),
        ("0x7f000001", True),
        ("example.1", True),
        ("1.2.3.4.", True),
        ("hooks.example.test", False),
        ("0x7g", False),
        ("1e5", False),
    ],
)
def test_ends_in_number(host, expected):
    assert ends_in_number(host) is expected
