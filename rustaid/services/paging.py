"""Pages of a List RPC (`page_size`, `page_token`, `next_page_token`).

A page token holds the sort key of the last item given, not an offset: an item added or
removed between two pages neither repeats nor hides another. It also holds the request's
filters, so a token is not used with others by mistake. Tokens are opaque to clients
(URL-safe base64 of a small JSON object) and carry nothing secret.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from rustaid.errors import InvalidArgument

T = TypeVar("T")

MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


def paginate(
    items: Iterable[T],
    key: Callable[[T], str],
    page_size: int,
    page_token: str,
    query: str = "",
    *,
    newest_first: bool = False,
) -> Page[T]:
    """The page of `items` (ordered by `key`, descending when `newest_first`) after the
    token's key. `page_size` 0 gives every remaining item; `query` names the filters."""
    if page_size < 0:
        raise InvalidArgument(
            f"page_size is {page_size}: give a positive number of items per page, "
            "or 0 for every item at once",
            field="page_size",
        )
    ordered = sorted(items, key=key, reverse=newest_first)
    if page_token:
        after = _after(page_token, query)
        ordered = [i for i in ordered if (key(i) < after if newest_first else key(i) > after)]
    size = min(page_size, MAX_PAGE_SIZE)
    if page_size == 0 or len(ordered) <= size:
        return Page(ordered, "")
    page = ordered[:size]
    return Page(page, _token(key(page[-1]), query))


def _token(after: str, query: str) -> str:
    raw = json.dumps({"v": 1, "after": after, "query": query}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _after(token: str, query: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        after, given = data["after"], data["query"]
        if data.get("v") != 1 or not isinstance(after, str) or not isinstance(given, str):
            raise ValueError
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InvalidArgument(
            "page_token is not one this daemon gave: pass the next_page_token of the "
            "previous page as it is, or leave page_token empty for the first page",
            field="page_token",
        ) from None
    if given != query:
        raise InvalidArgument(
            f"page_token belongs to a listing with other filters ({given or 'none'}, "
            f"this request: {query or 'none'}): send the same filters as for the first "
            "page, or leave page_token empty to start again",
            field="page_token",
        )
    return after
