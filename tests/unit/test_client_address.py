"""The client address behind trusted proxies (X-Forwarded-For), which keys the
failed-login limits: ``client_address(peer, headers, trusted)``."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

from hypothesis import given
from hypothesis import strategies as st
from websockets.datastructures import Headers

from hubbub.server.client_address import client_address

PROXIES: list[IPv4Network | IPv6Network] = [ip_network("10.0.0.0/8"), ip_network("fd00::/8")]


def xff(*values: str) -> Headers:
    headers = Headers()
    for value in values:
        headers["X-Forwarded-For"] = value  # Headers appends: one header line per value
    return headers


def test_without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() -> None:
    assert client_address("203.0.113.7", xff("198.51.100.1"), []) == "203.0.113.7"


def test_an_unknown_peer_is_unknown() -> None:
    assert client_address(None, xff("198.51.100.1"), PROXIES) == "unknown"


def test_an_untrusted_peer_cannot_claim_another_address() -> None:
    assert client_address("203.0.113.7", xff("198.51.100.1"), PROXIES) == "203.0.113.7"


def test_a_trusted_proxy_without_a_header_is_the_client() -> None:
    assert client_address("10.1.2.3", Headers(), PROXIES) == "10.1.2.3"


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_client() -> None:
    assert client_address("10.1.2.3", xff("198.51.100.1"), PROXIES) == "198.51.100.1"


def test_the_nearest_untrusted_hop_wins_over_what_the_client_itself_claimed() -> None:
    # The client sent "6.6.6.6" itself; two of our proxies appended the real hops.
    header = xff("6.6.6.6, 198.51.100.1, 10.9.9.9")
    assert client_address("10.1.2.3", header, PROXIES) == "198.51.100.1"


def test_when_every_hop_is_trusted_the_farthest_one_is_the_client() -> None:
    assert client_address("10.1.2.3", xff("10.5.5.5, 10.6.6.6"), PROXIES) == "10.5.5.5"


def test_spaces_and_empty_entries_are_ignored() -> None:
    assert client_address("10.1.2.3", xff(" ,198.51.100.1 ,  , 10.9.9.9,"), PROXIES) == "198.51.100.1"
    assert client_address("10.1.2.3", xff(" , ,"), PROXIES) == "10.1.2.3"


def test_garbage_from_beyond_the_proxies_is_kept_as_a_key_of_its_own() -> None:
    assert client_address("10.1.2.3", xff("not-an-address"), PROXIES) == "not-an-address"
    assert client_address("10.1.2.3", xff("198.51.100.1:4711"), PROXIES) == "198.51.100.1:4711"
    # Garbage farther out than a real untrusted hop does not matter.
    assert client_address("10.1.2.3", xff("garbage, 198.51.100.1"), PROXIES) == "198.51.100.1"


def test_ipv6_peers_proxies_and_clients() -> None:
    assert client_address("fd00::1", xff("2001:db8::42"), PROXIES) == "2001:db8::42"
    assert client_address("fd00::1", xff("2001:db8::42, fd00::2, 10.0.0.1"), PROXIES) == "2001:db8::42"
    assert client_address("2001:db8::1", xff("198.51.100.1"), PROXIES) == "2001:db8::1"
    assert client_address("::1", xff("198.51.100.1"), [ip_network("::1/128")]) == "198.51.100.1"


def test_an_exact_proxy_address_is_a_network_of_one() -> None:
    only = [ip_network("192.0.2.10/32")]
    assert client_address("192.0.2.10", xff("198.51.100.1"), only) == "198.51.100.1"
    assert client_address("192.0.2.11", xff("198.51.100.1"), only) == "192.0.2.11"


def test_header_name_case_does_not_matter() -> None:
    headers = Headers()
    headers["x-forwarded-for"] = "198.51.100.1"
    assert client_address("10.1.2.3", headers, PROXIES) == "198.51.100.1"


def test_header_lines_are_read_in_order_like_one_comma_joined_header() -> None:
    # The client sends a line of its own; the trusted proxy appends another
    # (HAProxy's `option forwardfor`): the proxy's hop is the nearest.
    assert client_address("10.1.2.3", xff("6.6.6.6", "198.51.100.1"), PROXIES) == "198.51.100.1"
    assert client_address("10.1.2.3", xff("6.6.6.6, 10.9.9.9", "198.51.100.1"), PROXIES) == "198.51.100.1"


def test_an_ipv4_mapped_peer_is_matched_against_ipv4_proxies() -> None:
    # A dual-stack listener sees an IPv4 proxy as ::ffff:10.1.2.3.
    assert client_address("::ffff:10.1.2.3", xff("198.51.100.1"), PROXIES) == "198.51.100.1"


_untrusted_v4 = st.ip_addresses(v=4).filter(lambda a: not any(a in net for net in PROXIES))
_trusted_v4 = st.ip_addresses(network="10.0.0.0/8")
_header_safe = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","), max_size=20)


@given(
    claimed=st.lists(
        st.one_of(
            st.ip_addresses().map(str),
            st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","), max_size=20),
        ),
        max_size=4,
    ),
    client=_untrusted_v4,
    proxies=st.lists(_trusted_v4, min_size=1, max_size=4),
)
def test_whatever_the_client_claims_the_result_is_the_hop_our_proxies_saw(
    claimed: list[str], client: IPv4Address | IPv6Address, proxies: list[IPv4Address | IPv6Address]
) -> None:
    """The last proxy is the peer; the others appended the hop they saw; the client
    put anything it liked in front."""
    *inner, peer = [str(p) for p in proxies]
    header = ", ".join([*claimed, str(client), *inner])
    assert client_address(peer, xff(header), PROXIES) == str(client)
