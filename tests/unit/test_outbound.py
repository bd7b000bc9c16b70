"""The outbound rule (lms.download.outbound) and the placement rule of downloads."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from yarl import URL

from lms import modelkeys
from lms.download import layout
from lms.download.outbound import (
    OutboundPolicy,
    OutboundSession,
    check_url,
    parse_url,
    refusal_reason,
    system_resolve,
)
from lms.errors import InvalidParameterError, UpstreamError, UrlNotAllowedError


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata endpoints live here
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8: how IPv6-only networks reach it
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_refusal_reasons(address: str, reason: str | None) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("fe80::1", False),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
    ],
)
def test_allowing_private_addresses_still_refuses_unreachable_ones(
    address: str, refused: bool
) -> None:
    reason = refusal_reason(ipaddress.ip_address(address), allow_private=True)
    assert (reason is not None) is refused


@pytest.mark.parametrize(
    "text",
    [
        "ftp://example.com/x.gguf",
        "file:///etc/passwd",
        "example.com/x.gguf",
        "http:///x.gguf",
        "https://user:secret@example.com/x.gguf",
    ],
)
def test_only_plain_http_urls_are_accepted(text: str) -> None:
    with pytest.raises(InvalidParameterError) as refused:
        parse_url(text)
    assert refused.value.param == "url"
    assert "secret" not in refused.value.message


def fake_dns(table: dict[str, list[str]]) -> OutboundPolicy:
    async def resolve(host: str, port: int) -> list[str]:
        return table[host]

    return OutboundPolicy(resolve=resolve, setting_hint="allow it with: SETTING")


async def test_check_url_resolves_and_checks_every_address() -> None:
    policy = fake_dns({"ok.test": ["93.184.216.34"], "mixed.test": ["93.184.216.34", "10.0.0.5"]})
    checked = await check_url("https://ok.test/a/b.gguf", policy)
    assert checked.addresses == ("93.184.216.34",)
    assert (checked.host, checked.port) == ("ok.test", 443)
    with pytest.raises(UrlNotAllowedError) as refused:
        await check_url("http://mixed.test:8080/x.gguf?sig=SECRET", policy)
    message = refused.value.message
    assert "http://mixed.test:8080/x.gguf" in message
    assert "resolves to 10.0.0.5, which is a private address" in message
    assert "SECRET" not in message  # query strings may carry signatures
    assert refused.value.hint == "allow it with: SETTING"
    assert refused.value.status == 403


async def test_ip_literals_are_checked_without_resolving() -> None:
    async def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError("an IP literal was resolved")

    policy = OutboundPolicy(resolve=no_dns)
    with pytest.raises(UrlNotAllowedError, match=r"::1 is a loopback address"):
        await check_url("http://[::1]:1234/x.gguf", policy)
    assert (await check_url("http://8.8.8.8/x.gguf", policy)).addresses == ("8.8.8.8",)
    allowed = OutboundPolicy(allow_private=True, resolve=no_dns)
    assert (await check_url("http://127.0.0.1/x.gguf", allowed)).addresses == ("127.0.0.1",)
    with pytest.raises(UrlNotAllowedError, match="unspecified"):
        await check_url("http://0.0.0.0/x.gguf", allowed)


async def test_the_system_resolver_sees_localhost_as_loopback() -> None:
    addresses = await system_resolve("localhost", 80)
    assert addresses
    assert all(refusal_reason(ipaddress.ip_address(a)) == "loopback" for a in addresses)
    with pytest.raises(UrlNotAllowedError, match="loopback"):
        await check_url("http://localhost:1234/x.gguf", OutboundPolicy())
    with pytest.raises(UpstreamError, match="cannot resolve"):
        await system_resolve("no-such-host.invalid", 80)


async def test_redirect_hops_are_checked_and_never_downgrade() -> None:
    policy = fake_dns({"cdn.test": ["93.184.216.35"], "inside.test": ["192.168.0.7"]})
    async with OutboundSession(policy) as session:
        hop = await session._next_hop(URL("https://hf.test/a/x.gguf"), "https://cdn.test/blob")
        assert hop.url == URL("https://cdn.test/blob")
        relative = await session._next_hop(URL("https://cdn.test/a/x.gguf"), "../b/y.gguf")
        assert relative.url == URL("https://cdn.test/b/y.gguf")
        with pytest.raises(UrlNotAllowedError, match="from https down to http"):
            await session._next_hop(URL("https://hf.test/x.gguf"), "http://cdn.test/x.gguf")
        with pytest.raises(UrlNotAllowedError) as inside:
            await session._next_hop(URL("https://hf.test/x.gguf"), "https://inside.test/x.gguf")
        assert "redirects to https://inside.test/x.gguf" in inside.value.message
        assert "192.168.0.7" in inside.value.message
        with pytest.raises(UrlNotAllowedError, match=r"not allowed|refused"):
            await session._next_hop(URL("https://hf.test/x.gguf"), "file:///etc/passwd")


# --- where downloads go ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "folder", "file_name"),
    [
        (
            "https://huggingface.co/lmstudio-community/gemma-3-1B-it-GGUF/resolve/main/gemma-3-1B-it-Q4_K_M.gguf",
            "lmstudio-community/gemma-3-1B-it-GGUF",
            "gemma-3-1B-it-Q4_K_M.gguf",
        ),
        (
            "https://hf-mirror.com/org/repo/resolve/abc123/sub/dir/m.gguf?download=true",
            "org/repo",
            "m.gguf",
        ),
        ("https://example.com/models/Tiny-Q8_0.gguf", "example.com/Tiny-Q8_0", "Tiny-Q8_0.gguf"),
        ("http://10.0.0.2:8000/a%20b.GGUF", "10.0.0.2/a_b", "a_b.GGUF"),
        ("https://example.com/..%2F..%2Fx.gguf", "example.com/_.._x", "_.._x.gguf"),
        ("https://example.com/.hidden.gguf", "example.com/hidden", "hidden.gguf"),
    ],
)
def test_placement_of_a_url(url: str, folder: str, file_name: str) -> None:
    placement = layout.placement_for_url(URL(url), publisher=None, name=None)
    assert (f"{placement.publisher}/{placement.name}", placement.file_name) == (folder, file_name)
    # No --publisher/--name: the key is LM Studio's, from the folder's name.
    assert placement.key == modelkeys.folder_key(placement.name)
    assert not placement.declared
    models = Path("/m")
    target = placement.target(models)
    assert target.parent.parent.parent == models  # never outside the models folder
    assert not any(part.startswith(".") for part in target.relative_to(models).parts)


def test_the_key_a_download_gets() -> None:
    hf = URL("https://huggingface.co/lmstudio-community/gemma-3-1B-it-GGUF/resolve/main/g.gguf")
    assert layout.placement_for_url(hf, publisher=None, name=None).key == "gemma-3-1b-it"
    named = layout.placement_for_url(hf, publisher="me", name="Mine")
    assert (named.key, named.declared) == ("me/Mine", True)
    only_name = layout.placement_for_url(hf, publisher=None, name="Mine")
    assert only_name.key == "lmstudio-community/Mine"


@pytest.mark.parametrize("url", ["https://example.com/", "https://example.com/x.bin"])
def test_a_url_must_name_a_gguf_file(url: str) -> None:
    with pytest.raises(InvalidParameterError) as refused:
        layout.placement_for_url(URL(url), publisher=None, name=None)
    assert refused.value.param == "url"


@pytest.mark.parametrize("bad", ["..", ".hidden", "a/b", "", "x" * 200, "sp ace"])
def test_explicit_names_must_be_safe(bad: str) -> None:
    with pytest.raises(InvalidParameterError) as refused:
        layout.placement_for_url(URL("https://e.com/x.gguf"), publisher=bad or "/", name="n")
    assert refused.value.param == "publisher"


def test_partial_files_are_hidden_from_discovery() -> None:
    target = Path("/m/p/n/file.gguf")
    assert layout.partial_path(target).name == ".file.gguf.part"
    assert layout.partial_meta_path(target).name.startswith(".")
