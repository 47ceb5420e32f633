"""Sentinel of our own: a master, a replica and Sentinel processes (`redis-server --sentinel`) on free loopback
ports, watching the master under `MASTER_NAME` with short timeouts so that a failover takes seconds."""

from __future__ import annotations

import time

import redis

from service.devtools.embedded import RedisServerProcess, free_port

MASTER_NAME = "tasks"
DOWN_AFTER_MS = 1000  # a master silent this long is down, for a Sentinel
FAILOVER_TIMEOUT_MS = 5000


class LocalSentinel:
    """A master and `replicas` replicas, watched by `sentinels` Sentinels (quorum: a majority)."""

    def __init__(
        self,
        replicas: int = 1,
        sentinels: int = 1,
        extra_args: tuple[str, ...] = (),
        sentinel_password: str = "",
        tls_files: tuple[str, str, str] | None = None,
        master_port: int | None = None,
    ) -> None:
        """`extra_args`: for the master and the replicas (a password, an ACL user, TLS...); `sentinel_password`: the
        Sentinels' own `requirepass`; `tls_files` (certificate, key, CA): the Sentinels also listen with TLS
        (`tls_addresses`) and reach the master with it, on `master_port` (its TLS port; default: its port)."""
        self.tls_addresses: list[str] = []
        self.sentinel_password = sentinel_password or None
        self.master = RedisServerProcess(extra_args=extra_args)
        self.replicas: list[RedisServerProcess] = []
        self.sentinels: list[RedisServerProcess] = []
        try:
            for _ in range(replicas):
                replica_of = ("--replicaof", "127.0.0.1", str(self.master.port))
                self.replicas.append(RedisServerProcess(extra_args=(*extra_args, *replica_of)))
            self._wait_synced()
            quorum = sentinels // 2 + 1
            config = (
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port or self.master.port} {quorum}\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            )
            if sentinel_password:  # the Sentinels ask it of clients and of each other
                config += f"requirepass {sentinel_password}\nsentinel sentinel-pass {sentinel_password}\n"
            for _ in range(sentinels):
                own = config
                if tls_files is not None:
                    tls_port = free_port()
                    certificate, key, ca = tls_files
                    own += (
                        f"tls-port {tls_port}\ntls-cert-file {certificate}\ntls-key-file {key}\n"
                        f"tls-ca-cert-file {ca}\ntls-replication yes\n"
                    )
                    self.tls_addresses.append(f"127.0.0.1:{tls_port}")
                self.sentinels.append(RedisServerProcess(extra_args=("--sentinel",), config=own))
            self._wait_watching()
        except BaseException:
            self.close()
            raise

    @property
    def addresses(self) -> list[str]:
        """The Sentinels as `[redis] sentinels` takes them."""
        return [f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels]

    def master_port(self) -> int:
        """The port of the master the Sentinels name now."""
        with redis.Redis(port=self.sentinels[0].port, socket_timeout=1, password=self.sentinel_password) as client:
            address = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(address[1])

    def _wait_synced(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        for replica in self.replicas:
            with redis.Redis(port=replica.port, socket_timeout=1) as client:
                while client.info("replication").get("master_link_status") != "up":
                    if time.monotonic() > deadline:
                        raise RuntimeError("the replica did not sync with the master")
                    time.sleep(0.05)

    def _wait_watching(self, timeout: float = 20.0) -> None:
        """Until every Sentinel knows the replicas (it learns them from the master's INFO, every 10 s at first)."""
        deadline = time.monotonic() + timeout
        for sentinel in self.sentinels:
            with redis.Redis(port=sentinel.port, socket_timeout=1, password=self.sentinel_password) as client:
                while len(client.sentinel_slaves(MASTER_NAME)) < len(self.replicas):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the Sentinel did not learn the replicas")
                    time.sleep(0.1)

    def close(self) -> None:
        for server in (*self.sentinels, *self.replicas, self.master):
            server.close()
