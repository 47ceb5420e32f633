"""The query string: its parameters parsed and checked one by one; a refused value raises `QueryError`, which
names the parameter, the value and what is accepted."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import TypeVar

MAX_PAGE = 10**9
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100  # when `page` is given without `pageSize`
MAX_VALUES = 1000  # values of one list parameter (clientId, status, ...)
EPOCH_MS_MAX_DIGITS = 15  # up to the year 33658: every instant an RFC 3339 time can name, and more
TIME_ACCEPTED = (
    f"an RFC 3339 time such as 2026-11-28T01:02:03Z, or epoch milliseconds (at most {EPOCH_MS_MAX_DIGITS} digits)"
)

# A `+` in a query string is a space once decoded: `...T01:00:00+08:00` sent unencoded arrives as `... 08:00`.
_LOST_PLUS = re.compile(r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:?\d{2})$")


class QueryError(ValueError):
    """A query parameter with a value that is not accepted; rendered as a 400 envelope naming the parameter."""

    def __init__(self, parameter: str, value: str, accepted: str) -> None:
        super().__init__(f"{parameter}: {value!r} is not accepted; expected {accepted}")
        self.parameter = parameter
        self.value = value
        self.accepted = accepted

    def as_data(self) -> dict[str, str]:
        return {"parameter": self.parameter, "value": self.value, "accepted": self.accepted}


@dataclass(frozen=True, slots=True)
class Paging:
    page: int
    page_size: int


class Params:
    """The query string's (name, value) pairs; a parameter given empty counts as absent."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in items:
            if value.strip():
                self._values.setdefault(name, []).append(value)

    def single(self, name: str) -> str | None:
        values = self._values.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise QueryError(name, ",".join(values), "a single value (the parameter is given more than once)")
        return values[0].strip()

    def many(self, name: str) -> list[str] | None:
        """A repeatable, comma-separated parameter: its distinct values, in order of appearance; empty ones are
        ignored but, like repeats, count towards the MAX_VALUES a request may send."""
        values = self._values.get(name)
        if not values:
            return None
        parts = [part for value in values for part in value.split(",")]
        if len(parts) > MAX_VALUES:
            raise QueryError(name, f"{len(parts)} values", f"at most {MAX_VALUES} values")
        items = list(dict.fromkeys(part.strip() for part in parts if part.strip()))
        return items or None


def parse_choices(
    params: Params, name: str, accepted: Sequence[str], aliases: dict[str, str] | None = None
) -> tuple[str, ...] | None:
    """A list parameter whose values must come from `accepted` (case-sensitive); sorted and distinct."""
    values = params.many(name)
    if values is None:
        return None
    aliases = aliases or {}
    chosen: set[str] = set()
    for value in values:
        value = aliases.get(value, value)
        if value not in accepted:
            raise QueryError(name, value, "one or more of " + ", ".join(accepted))
        chosen.add(value)
    return tuple(sorted(chosen))


def parse_instant(name: str, raw: str) -> int:
    """Epoch milliseconds from RFC 3339 text (a time without an offset is read as UTC) or epoch milliseconds."""
    text = raw.strip()
    if _is_ascii_number(text):
        if len(text) > EPOCH_MS_MAX_DIGITS:
            raise QueryError(name, raw, TIME_ACCEPTED)
        return int(text)
    try:
        parsed = datetime.fromisoformat(_LOST_PLUS.sub(r"\1+\2", text))
    except ValueError:
        raise QueryError(name, raw, TIME_ACCEPTED) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return round(parsed.timestamp() * 1000)


def parse_range(params: Params, after_name: str, before_name: str) -> tuple[int | None, int | None]:
    """A half-open time range `after <= t < before`; either end may be open."""
    after_raw, before_raw = params.single(after_name), params.single(before_name)
    after = None if after_raw is None else parse_instant(after_name, after_raw)
    before = None if before_raw is None else parse_instant(before_name, before_raw)
    if after is not None and before is not None and after >= before:
        raise QueryError(before_name, before_raw or "", f"a time later than {after_name} ({after_raw})")
    return after, before


def parse_bool(params: Params, name: str) -> bool | None:
    raw = params.single(name)
    if raw is None:
        return None
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise QueryError(name, raw, "true or false")


def _parse_int(params: Params, name: str, low: int, high: int) -> int | None:
    raw = params.single(name)
    if raw is None:
        return None
    # the length check first: int() of thousands of digits is slow, and refused past 4300
    if not _is_ascii_number(raw) or len(raw.lstrip("0")) > len(str(high)) or not low <= int(raw) <= high:
        raise QueryError(name, raw, f"an integer from {low} to {high}")
    return int(raw)


def _is_ascii_number(text: str) -> bool:
    # str.isdigit() also holds for digits int() refuses ("²") and for other scripts' digits ("٣")
    return text.isascii() and text.isdigit()


def parse_paging(params: Params, default_size: int | None = None) -> Paging | None:
    """`page` (from 1) and `pageSize` (1-1000); None when neither is given and there is no default size."""
    page = _parse_int(params, "page", 1, MAX_PAGE)
    size = _parse_int(params, "pageSize", 1, MAX_PAGE_SIZE)
    if page is None and size is None and default_size is None:
        return None
    return Paging(page or 1, size or default_size or DEFAULT_PAGE_SIZE)


def parse_sort(
    params: Params, accepted: Sequence[str], default: tuple[tuple[str, bool], ...]
) -> tuple[tuple[str, bool], ...]:
    """`sort=key` ascending, `sort=-key` descending; several keys comma-separated, the first one leads."""
    keys = params.many("sort")
    if keys is None:
        return default
    spec: list[tuple[str, bool]] = []
    for key in keys:
        descending = key.startswith("-")
        name = key.lstrip("+-").strip()
        if name not in accepted:
            options = ", ".join(accepted)
            raise QueryError("sort", key, f"one of {options}, with a - prefix for descending")
        if any(name == earlier for earlier, _ in spec):
            raise QueryError("sort", ",".join(keys), "each key at most once")
        spec.append((name, descending))
    return tuple(spec)


_Item = TypeVar("_Item")


def in_range(
    items: Sequence[_Item], key: Callable[[_Item], int], after: int | None, before: int | None
) -> Sequence[_Item]:
    """The items whose `key` lies in the half-open range [after, before); a bound of None is open."""
    if after is not None:
        items = [item for item in items if key(item) >= after]
    if before is not None:
        items = [item for item in items if key(item) < before]
    return items


def one_of(items: Sequence[_Item], attribute: str, values: tuple[str, ...] | None) -> Sequence[_Item]:
    """The items whose `attribute` is one of `values`; all of them when `values` is None (no filter)."""
    if values is None:
        return items
    allowed, get = frozenset(values), attrgetter(attribute)
    return [item for item in items if get(item) in allowed]


def sort_by(
    items: Sequence[_Item],
    sort: tuple[tuple[str, bool], ...],
    default: tuple[tuple[str, bool], ...],
    attributes: Mapping[str, str],
) -> Sequence[_Item]:
    """`items` in the order `sort` asks for ((key, descending) pairs, the first leads); in their own order when it
    is `default`, the order they come in. Stable sorts from the last key to the first, so ties keep that order."""
    if sort == default:
        return items
    for name, descending in reversed(sort):
        items = sorted(items, key=attrgetter(attributes[name]), reverse=descending)
    return items
