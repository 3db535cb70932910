"""One HTTP GET of a document we keep a copy of: conditional, size-capped, time-bounded.

Shared by `feeds:` (gateway/feeds/client.py) and lists.yaml `url:` sources
(gateway/runtime/list_refresh.py) so both send If-None-Match / If-Modified-Since the same way,
refuse a body past the same bound before holding it whole, and notice a truncated transfer.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp


class FetchError(Exception):
    """A GET that gave no usable body; `reason` is a bounded metric label: http | too_big |
    truncated."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def conditional_headers(etag: str, last_modified: str) -> dict[str, str]:
    """The validators of the copy we hold, so an unchanged document costs a 304."""
    headers = {}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    return headers


async def fetch(session: aiohttp.ClientSession, url: str, *, headers: Mapping[str, str],
                timeout: float, max_bytes: int, limit_key: str,
                params: Mapping[str, str] | None = None, missing_ok: bool = False
                ) -> tuple[int, bytes, Mapping[str, str]]:
    """GET `url`: (200, body, headers) or (304, b"", headers), and (404, b"", headers) when
    `missing_ok`; anything else is a FetchError.

    The body is read in chunks and refused as soon as it passes `max_bytes` (named in the
    message by `limit_key`), so a hostile server cannot make us hold more than that.
    """
    try:
        async with session.get(url, params=params, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status == 304 or (resp.status == 404 and missing_ok):
                return resp.status, b"", resp.headers
            if resp.status != 200:
                raise FetchError("http", f"HTTP {resp.status} from {url}")
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise FetchError("too_big", f"document of {resp.content_length} bytes is "
                                            f"larger than {limit_key} ({max_bytes})")
            chunks, size = [], 0
            async for chunk in resp.content.iter_chunked(65536):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError("too_big", f"document larger than {limit_key} "
                                                f"({max_bytes})")
                chunks.append(chunk)
            body = b"".join(chunks)
            if resp.content_length is not None and resp.content_length != len(body):
                raise FetchError("truncated", f"got {len(body)} of {resp.content_length} bytes")
            return 200, body, resp.headers
    except aiohttp.ClientPayloadError as exc:
        raise FetchError("truncated", f"incomplete body: {exc}") from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise FetchError("http", f"{type(exc).__name__}: {exc}") from None
