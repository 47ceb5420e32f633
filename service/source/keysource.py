"""What the scanner and the change feed's batches read Redis through, whatever the topology: one server
(`redis_source.RedisSource`, standalone and sentinel) or every primary of a cluster (`cluster_source.ClusterSource`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from service.source.redis_source import KeyMeta, NodeStats, ScanPage


class KeySource(Protocol):
    tls: bool  # whether the connections speak TLS (a failed connect is then most often a failed handshake)
    rewalks: int  # a cluster's scans walked again because slots moved meanwhile (0 elsewhere)
    failovers: int  # a cluster's primaries that failed mid-scan and were walked again on their successor

    def scan_pages(self, pattern: str, count: int) -> AsyncGenerator[ScanPage, None]:
        """Every key matching `pattern`, in pages, each key with its expiry time and length; close it when leaving
        early."""
        ...

    async def read(self, metas: list[KeyMeta]) -> list[bytes | None]:
        """The values of `metas`' keys, in order (None: gone, or of another type)."""
        ...

    async def lookup(self, keys: list[bytes]) -> tuple[ScanPage, list[bytes | None]]:
        """`keys` described as a SCAN page would, with their values up to the byte budget."""
        ...

    async def swapdb_calls(self) -> int | None:
        """SWAPDB commands Redis has run, None when it will not say (raises when Redis fails)."""
        ...

    async def ping(self) -> bool: ...

    def nodes(self) -> list[NodeStats]:
        """Each node's statistics (the primaries of a cluster)."""
        ...

    async def aclose(self) -> None:
        """Close what the source opened itself (not the client it was given)."""
        ...
