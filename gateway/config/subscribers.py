"""`subscribers:` an ISP's prefix -> tier file, local or polled from a URL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gateway.config.spec import SECONDS, STR, Key, Shape, enum
from gateway.config.values import FileRefs, default, http_url, read_seconds
from gateway.config.yamlconf import YDict, error_at, expect_mapping, expect_str, where

FORMATS = ("csv", "yaml")


@dataclass(frozen=True)
class SubscribersSource:
    """`subscribers: {url: ...}`: the ISP's provisioning system publishes the file."""

    url: str
    interval: float = 300.0
    token_file: Path | None = None   # a bearer token for the URL, read at each poll


SOURCE = Shape("subscribers", (
    Key("url", STR, "http(s) URL of the ISP's subscribers export", required=True),
    Key("interval", SECONDS, "seconds between polls", default(SubscribersSource, "interval")),
    Key("token_file", STR, "file holding a bearer token for the URL (read at each poll)"),
    Key("format", enum(*FORMATS), "csv or yaml; default: from the URL's file name"),
), "the subscribers file from a URL, kept in state_dir", nullable=False)


def parse_subscribers(doc: YDict, rel: Callable[[str], Path], state_dir: Path, refs: FileRefs
                      ) -> tuple[Path | None, SubscribersSource | None]:
    """`subscribers: FILE` or `subscribers: {url, interval, token_file, format}`.

    From a URL, the file is the last-known-good copy in state_dir (runtime/subscribers_poll.py).
    """
    if "subscribers" not in doc:
        return None, None
    raw = doc["subscribers"]
    if isinstance(raw, str):
        refs["subscribers"] = where(None, doc, "subscribers")
        return rel(raw), None
    item = expect_mapping(raw, "subscribers (a file name, or {url: ...})", doc, "subscribers")
    SOURCE.check(item)
    url = expect_str(item.get("url"), "subscribers.url", item, "url")
    if not http_url(url):
        raise error_at(f"subscribers.url must be an http(s) URL, got {url!r}", None, item, "url")
    # The format follows the URL's file name unless written.
    fmt = expect_str(item.get("format", FORMATS[1] if urlsplit(url).path.endswith((".yaml", ".yml"))
                              else FORMATS[0]), "subscribers.format", item, "format")
    if fmt not in FORMATS:
        raise error_at(f"subscribers.format must be csv or yaml, got {fmt!r}", None, item,
                       "format")
    token_file = default(SubscribersSource, "token_file")
    if "token_file" in item:
        token_file = rel(expect_str(item["token_file"], "subscribers.token_file", item,
                                    "token_file"))
        refs["subscribers.token_file"] = where(None, item, "token_file")
    interval = default(SubscribersSource, "interval")
    if "interval" in item:
        interval = read_seconds(item["interval"], "subscribers.interval", item, "interval")
    return state_dir / f"subscribers.{fmt}", SubscribersSource(url, interval, token_file)
