"""A Redis Cluster of our own: `redis-server --cluster-enabled yes` processes on free loopback ports, joined by
`redis-cli --cluster create`. Used by the demo (`demo --cluster`), the tests and the bench."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import redis

from service.devtools.embedded import RedisServerProcess, free_port

# How long a primary may be unreachable before its replica takes over: short, so that tests of a failover are quick.
NODE_TIMEOUT_MS = 1000


def cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000) is a port and free too."""
    while True:
        port = free_port()
        if port + 10000 <= 65535 and _free(port + 10000):
            return port


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalCluster:
    """`primaries` primaries (each with `replicas` replicas) on free ports, every slot assigned; `close` stops them."""

    kind = "redis-server cluster"

    def __init__(self, primaries: int = 3, replicas: int = 0, extra_args: tuple[str, ...] = ()) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli is not installed (Debian: apt-get install redis-tools)")
        cluster_args = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            *extra_args,
        )  # fmt: skip
        self._cluster_args = cluster_args
        self.nodes: list[RedisServerProcess] = []
        try:
            for _ in range(primaries * (1 + replicas)):
                self.nodes.append(RedisServerProcess(cluster_port(), extra_args=cluster_args))
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-replicas", str(replicas), "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.wait_ok()
        except BaseException:
            self.close()
            raise
        self.url = f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def add_primary(self) -> RedisServerProcess:
        """A new node joined to the running cluster as a primary that serves no slot yet (as `redis-cli --cluster
        add-node` makes one): move slots to it to have it serve keys."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli is not installed (Debian: apt-get install redis-tools)")
        node = RedisServerProcess(cluster_port(), extra_args=self._cluster_args)
        self.nodes.append(node)
        existing = f"127.0.0.1:{self.running()[0].port}"
        subprocess.run(
            [cli, "--cluster", "add-node", f"127.0.0.1:{node.port}", existing],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()
        return node

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says the cluster is ok, knows every node, and the replicas have synced."""
        deadline = time.monotonic() + timeout
        while True:
            if all(self._node_ok(node) for node in self.nodes if node.pid):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the local cluster did not become ready")
            time.sleep(0.1)

    def _node_ok(self, node: RedisServerProcess) -> bool:
        try:
            with redis.Redis(port=node.port, socket_timeout=1) as client:
                info = client.cluster("info")
                if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) < len(self.running()):
                    return False
                replication = client.info("replication")
                return bool(replication.get("role") != "slave" or replication.get("master_link_status") == "up")
        except redis.RedisError:
            return False

    def running(self) -> list[RedisServerProcess]:
        return [node for node in self.nodes if node.pid]

    def primaries(self) -> list[RedisServerProcess]:
        """The running nodes that serve slots as primaries now."""
        found = []
        for node in self.running():
            with redis.Redis(port=node.port, socket_timeout=1) as client:
                if client.info("replication").get("role") == "master":
                    found.append(node)
        return found

    def node(self, port: int) -> RedisServerProcess:
        return next(node for node in self.nodes if node.port == port)

    def client(self) -> redis.RedisCluster:
        """A synchronous cluster client (for a test's or the demo's own writes)."""
        return redis.RedisCluster(host="127.0.0.1", port=self.running()[0].port)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
