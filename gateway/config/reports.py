"""`reports:` where harmful-content and mistake reports are forwarded (issue 5)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.spec import STRINGS, Key, Shape
from gateway.config.values import http_url
from gateway.config.yamlconf import (
    YDict,
    error_at,
    expect_list,
    expect_mapping,
    expect_str,
)


@dataclass(frozen=True)
class ReportsConfig:
    """`reports:`; each forward_to is a publisher's /v1/reports or any JSON webhook."""

    forward_to: tuple[str, ...] = ()


REPORTS = Shape("reports", (
    Key("forward_to", STRINGS, "http(s) URLs each block-page report is forwarded to (a "
        "publisher's /v1/reports or any JSON webhook)"),
), "where block-page reports go")


def parse_reports(doc: YDict) -> ReportsConfig:
    """`reports:`; each forward_to is an http(s) URL."""
    reports = expect_mapping(doc.get("reports"), "reports", doc, "reports")
    REPORTS.check(reports)
    if "forward_to" not in reports:
        return ReportsConfig()
    items = expect_list(reports["forward_to"], "reports.forward_to", reports, "forward_to")
    urls: list[str] = []
    for i, item in enumerate(items):
        url = expect_str(item, "a reports.forward_to entry", items, i)
        if not http_url(url):
            raise error_at(f"reports.forward_to: {url!r} is not an http(s) URL", None, items, i)
        urls.append(url)
    return ReportsConfig(tuple(urls))
