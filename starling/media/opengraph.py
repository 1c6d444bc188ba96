"""OpenGraph metadata from an HTML page, for URL previews.

Reads `og:*` meta tags, falling back to `<title>`, `<meta name="description">`,
`twitter:*` tags, `<link rel="image_src">` and the first `<img>` for what the page does not
declare. Uses the standard library's tolerant HTML tokenizer (no DOM is built), bounded in
input size, number of keys and value lengths.
"""

from __future__ import annotations

import contextlib
import re
from html.parser import HTMLParser
from typing import Any

# Most pages declare everything in <head>; a megabyte of markup is plenty.
MAX_HTML_CHARS = 1024 * 1024
MAX_OG_KEYS = 50
MAX_VALUE_CHARS = 1000
MAX_DESCRIPTION_CHARS = 500

_CHARSET_META = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_:.-]+)""", re.I)


def decode_html(body: bytes, content_type_charset: str | None) -> str:
    """Text of an HTML body: the HTTP charset, else a <meta charset>, else UTF-8."""
    candidates = [content_type_charset]
    m = _CHARSET_META.search(body[:4096])
    if m:
        candidates.append(m.group(1).decode("ascii", "replace"))
    for name in candidates:
        if not name:
            continue
        # A page names any codec it likes: unknown ones, binary codecs ("base64", "zlib"),
        # ones that always fail ("undefined") or refuse errors="replace" ("idna"), names
        # with NUL. Only a text encoding that decodes is used; anything else falls through.
        try:
            return body.decode(name, errors="replace")
        except (LookupError, UnicodeError, ValueError):
            continue
    return body.decode("utf-8", errors="replace")


class _OGParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.og: dict[str, str] = {}
        self.fallback: dict[str, str] = {}
        self._in_title = False
        self._title: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "meta":
            key = (a.get("property") or a.get("name") or a.get("itemprop") or "").strip()
            content = a.get("content")
            if not key or content is None:
                return
            lowered = key.lower()
            if lowered.startswith("og:"):
                if len(self.og) < MAX_OG_KEYS and key not in self.og:
                    self.og[key] = content.strip()[:MAX_VALUE_CHARS]
            elif lowered in ("description", "twitter:description"):
                self.fallback.setdefault("og:description", content.strip())
            elif lowered == "twitter:title":
                self.fallback.setdefault("og:title", content.strip())
            elif lowered in ("twitter:image", "twitter:image:src", "image"):
                self.fallback.setdefault("og:image", content.strip())
        elif tag == "link":
            if "image_src" in a.get("rel", "").lower().split() and a.get("href"):
                self.fallback.setdefault("og:image", a["href"].strip())
        elif tag == "img":
            if a.get("src") and not a["src"].startswith("data:"):
                self.fallback.setdefault("img", a["src"].strip())
        elif tag == "title" and not self._title:
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title and sum(len(t) for t in self._title) < MAX_VALUE_CHARS:
            self._title.append(data)

    @property
    def title(self) -> str:
        return " ".join("".join(self._title).split())[:MAX_VALUE_CHARS]


def parse_opengraph(html: str) -> dict[str, Any]:
    """The page's OpenGraph keys with fallbacks; og:image may be relative (the caller
    resolves and fetches it)."""
    parser = _OGParser()
    # The tokenizer gives up on some broken markup: keep what it read until then.
    with contextlib.suppress(AssertionError, ValueError):
        parser.feed(html[:MAX_HTML_CHARS])
        parser.close()
    og: dict[str, Any] = dict(parser.og)
    if not og.get("og:title"):
        title = parser.fallback.get("og:title") or parser.title
        if title:
            og["og:title"] = title[:MAX_VALUE_CHARS]
    if not og.get("og:description") and parser.fallback.get("og:description"):
        og["og:description"] = parser.fallback["og:description"]
    if not og.get("og:image"):
        image = parser.fallback.get("og:image") or parser.fallback.get("img")
        if image:
            og["og:image"] = image[:MAX_VALUE_CHARS]
    if isinstance(og.get("og:description"), str):
        desc = " ".join(og["og:description"].split())
        if len(desc) > MAX_DESCRIPTION_CHARS:
            desc = desc[: MAX_DESCRIPTION_CHARS - 1].rstrip() + "…"
        og["og:description"] = desc
    return {k: v for k, v in og.items() if v != ""}
