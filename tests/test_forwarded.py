from __future__ import annotations

import pytest

from proxy.config import ConfigError, load_settings
from proxy.forwarded import TrustedProxies, parse_networks

XFF = b"x-forwarded-for"


def _proxies(raw: str) -> TrustedProxies:
    return TrustedProxies(parse_networks(raw))


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    assert _proxies("").client("127.0.0.1", [(XFF, b"203.0.113.9")]) == "127.0.0.1"


def test_an_untrusted_peer_cannot_claim_an_address() -> None:
    assert _proxies("127.0.0.1").client("127.0.0.2", [(XFF, b"203.0.113.9")]) == "127.0.0.2"


def test_the_first_untrusted_hop_from_the_right_is_the_client() -> None:
    proxies = _proxies("127.0.0.1, 10.0.0.0/8")
    # client forged "6.6.6.6"; a load balancer at 10.0.0.5 added the real client 198.51.100.7
    headers = [(XFF, b"6.6.6.6, 198.51.100.7"), (XFF, b"10.0.0.5")]
    assert proxies.client("127.0.0.1", headers) == "198.51.100.7"


def test_only_trusted_hops_means_the_leftmost_one() -> None:
    assert _proxies("127.0.0.1, 10.0.0.0/8").client("127.0.0.1", [(XFF, b"10.0.0.7, 10.0.0.5")]) == "10.0.0.7"


def test_trusted_peer_without_header_is_the_client() -> None:
    assert _proxies("127.0.0.1").client("127.0.0.1", []) == "127.0.0.1"


def test_ipv6_and_garbage() -> None:
    proxies = _proxies("::1")
    assert proxies.client("::1", [(XFF, b"2001:db8::7")]) == "2001:db8::7"
    assert proxies.client("::1", [(XFF, b"not-an-ip")]) == "not-an-ip"  # reported as given, never trusted


def test_bad_setting_names_itself() -> None:
    with pytest.raises(ConfigError, match="SLUICE_TRUSTED_PROXIES"):
        load_settings({"SLUICE_TRUSTED_PROXIES": "127.0.0.1, nginx.local"})
    assert len(load_settings({"SLUICE_TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/8"}).trusted_proxies) == 2
