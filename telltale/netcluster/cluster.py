"""`NetCluster`: a small fleet on one machine — a 3-member etcd cluster, two controllers and N
node agents, each node in a network namespace of its own, joined by a bridge in a hub namespace.

    hub namespace  <prefix>-hub: bridge br0 10.77.0.1/24, controllers at .21 and .22 (API port 7443,
                   mutual-TLS agent port 7444), etcd members on the hub's loopback (127.0.0.11-13),
                   a relay from unix sockets in the work directory to the controllers' API ports
    node namespace <prefix>-nodeI: eth0 10.77.0.(100+I)/24, veth to the bridge, one `telltale agent`
                   (enforcement on, so its nftables table lives in that namespace only)

Controllers serve TLS (plaintext is loopback-only) with certificates from a throwaway CA made with
`telltale.pki`; each agent presents a node certificate. The first admin token is bootstrapped by
the first controller. The host's own namespace is never changed: processes in it reach the
controllers through the relay's unix sockets (`channel()`), the CLI runs inside the hub (`cli()`).

Use it as a context manager (tests), or `up()` with `detached=True` and later `teardown()` from
another process (`python -m telltale.netcluster`): every namespace and process is recorded in the
state file before it exists, so `down` works after a crash of `up`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from telltale import pki
from telltale.cli.client import every_page
from telltale.netcluster import network
from telltale.netcluster.state import DEFAULT_STATE_DIR, Process, State, alive, end, ours, teardown
from telltale.procutil import tied_to_parent
from telltale.v1 import inventory_pb2, inventory_pb2_grpc

SUBNET = "10.77.0"
HUB_ADDRESS = f"{SUBNET}.1"
CONTROLLERS = {"ctl-a": f"{SUBNET}.21", "ctl-b": f"{SUBNET}.22"}
ETCD = {f"etcd{i}": f"127.0.0.{10 + i}" for i in (1, 2, 3)}
API_PORT, AGENT_PORT = 7443, 7444
HEALTH = health_pb2.HealthCheckRequest(service="telltale.v1.AgentService")


class ClusterError(RuntimeError):
    """The cluster could not be brought up (or a part of it restarted); says what, with a log tail."""


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `condition` until it is truthy; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def node_address(index: int) -> str:
    """The address of node `index` (1-based)."""
    return f"{SUBNET}.{100 + index}"


class NetCluster:
    """N nodes, two controllers, three etcd members, in namespaces named `prefix`-…"""

    def __init__(
        self,
        workdir: Path,
        nodes: int = 3,
        *,
        prefix: str = "tt",
        state_file: Path | None = None,
        lease_ttl: int = 2,
        agent_args: Sequence[str] = (),
        node_args: dict[str, Sequence[str]] | None = None,
        log_level: str = "info",
        detached: bool = False,
        keep: bool = False,
        progress: Callable[[str], None] = lambda line: None,
    ) -> None:
        """`detached`: the daemons outlive this process (the CLI's `up`); otherwise each is sent
        SIGTERM if the thread that started it dies. `agent_args` go to every agent, `node_args`
        (node name -> flags) to one."""
        if not 1 <= nodes <= 150:
            raise ValueError(f"nodes must be between 1 and 150, not {nodes}")
        self.workdir = workdir.resolve()
        self.nodes = [f"node{i}" for i in range(1, nodes + 1)]
        self.prefix = prefix
        self.state_file = state_file or DEFAULT_STATE_DIR / f"{prefix}.json"
        self.lease_ttl = lease_ttl
        self.agent_args = list(agent_args)
        self.node_args = {node: list(args) for node, args in (node_args or {}).items()}
        self.log_level = log_level
        self.detached = detached
        self.progress = progress
        self.hub = f"{prefix}-hub"
        self.pki_dir = self.workdir / "pki"
        self.token_file = self.workdir / "admin.token"
        self.state = State(prefix=prefix, workdir=str(self.workdir), keep=keep)
        self.popen: dict[str, subprocess.Popen[bytes]] = {}
        self.argv: dict[str, list[str]] = {}
        self.netns_of: dict[str, str] = {}

    # -- names and addresses ---------------------------------------------------------------
    def netns(self, node: str) -> str:
        """The namespace of `node` (or the hub's, for a controller, an etcd member or "hub")."""
        return f"{self.prefix}-{node}" if node in self.nodes else self.hub

    def address(self, name: str) -> str:
        """The IPv4 address of a node or a controller."""
        if name in CONTROLLERS:
            return CONTROLLERS[name]
        return node_address(self.nodes.index(name) + 1)

    @property
    def agent_endpoints(self) -> list[str]:
        return [f"{a}:{AGENT_PORT}" for a in CONTROLLERS.values()]

    @property
    def etcd_endpoints(self) -> list[str]:
        return [f"http://{a}:2379" for a in ETCD.values()]

    def api_socket(self, controller: str = "ctl-a") -> Path:
        """The relay's unix socket leading to `controller`'s API port."""
        return self.workdir / f"api-{controller}.sock"

    def socket(self, node: str) -> Path:
        """`node`'s shim socket."""
        return self.workdir / node / "agent.sock"

    def state_dir(self, node: str) -> Path:
        return self.workdir / node / "state"

    def log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join(self.log(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- bring up / tear down --------------------------------------------------------------
    def up(self) -> NetCluster:
        """Create everything and wait until it is healthy; on failure, remove what was made.
        ClusterError when a cluster with this state file (or namespace) exists already."""
        network.check_prerequisites()
        if self.state_file.exists() or self.hub in network.namespaces():
            raise ClusterError(
                f"a cluster named {self.prefix!r} is already up (state {self.state_file}): "
                f"run `python -m telltale.netcluster down --prefix {self.prefix}` first"
            )
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self

    def _up(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.state.save(self.state_file)
        self.progress(f"network: {self.hub} (bridge {HUB_ADDRESS}/24) and {len(self.nodes)} node namespaces")
        self._namespace(self.hub)
        network.make_hub(self.hub, [HUB_ADDRESS, *CONTROLLERS.values()])
        for node in self.nodes:
            self._namespace(self.netns(node))
            network.join(self.hub, self.netns(node), node, self.address(node))
            self.state.addresses[node] = self.address(node)
        self.state.addresses.update(CONTROLLERS)
        self.progress("certificates: a throwaway CA, one per controller, one per node")
        self._certificates()
        self.progress("etcd: 3 members on the hub's loopback")
        self._spawn("relay", self.hub, self._relay_argv())
        for name in ETCD:
            self._spawn(name, self.hub, self._etcd_argv(name))
        wait_until(self._etcd_healthy, 60, "the etcd cluster to be healthy")
        for name, address in CONTROLLERS.items():
            self.progress(f"controller {name} at {address}:{API_PORT} (agents :{AGENT_PORT})")
            self.start(name)
        self.progress(f"agents: {len(self.nodes)}, connecting to both controllers' agent ports")
        for node in self.nodes:
            self._spawn(node, self.netns(node), self._agent_argv(node))
        for node in self.nodes:
            self._wait_agent(node)
        self.wait_online(self.nodes)
        self.state.endpoints = {
            "api": ",".join(f"{a}:{API_PORT}" for a in CONTROLLERS.values()),
            "agents": ",".join(self.agent_endpoints),
            "etcd": ",".join(self.etcd_endpoints),
            "ca": str(self.pki_dir / pki.CA_CERT),
            "token_file": str(self.token_file),
        }
        self.state.ready = True
        self.state.save(self.state_file)

    def _namespace(self, name: str) -> None:
        self.state.namespaces.append(name)
        self.state.save(self.state_file)
        network.add_namespace(name)

    def _certificates(self) -> None:
        pki.init_ca(self.pki_dir)
        for name, address in CONTROLLERS.items():
            pki.issue(self.pki_dir, "controller", name, ips=[address], dns=[name, "localhost"])
        for node in self.nodes:
            pki.issue(self.pki_dir, "node", node)

    def down(self, *, keep: bool | None = None) -> list[str]:
        """Stop and remove everything this cluster made (also what a crashed `up` left)."""
        removed = teardown(self.state, keep=keep)
        for process in self.popen.values():
            with contextlib.suppress(ChildProcessError, subprocess.TimeoutExpired):
                process.wait(timeout=1)
        self.popen.clear()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        return removed

    def __enter__(self) -> NetCluster:
        return self.up()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    # -- command lines ---------------------------------------------------------------------
    @staticmethod
    def telltale(*args: str) -> list[str]:
        return [sys.executable, "-m", "telltale.cli.main", *args]

    def _relay_argv(self) -> list[str]:
        routes = [f"{self.api_socket(n)}={a}:{API_PORT}" for n, a in CONTROLLERS.items()]
        return [sys.executable, "-m", "telltale.netcluster.relay", *routes]

    def _etcd_argv(self, name: str) -> list[str]:
        from telltale.controller.etcd import find_etcd_binary

        cluster = ",".join(f"{n}=http://{a}:2380" for n, a in ETCD.items())
        address = ETCD[name]
        return [
            find_etcd_binary(),
            "--name", name,
            "--data-dir", str(self.workdir / name),
            "--listen-client-urls", f"http://{address}:2379",
            "--advertise-client-urls", f"http://{address}:2379",
            "--listen-peer-urls", f"http://{address}:2380",
            "--initial-advertise-peer-urls", f"http://{address}:2380",
            "--initial-cluster", cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"telltale-{self.prefix}",
            "--log-level", "warn",
        ]  # fmt: skip

    def _controller_argv(self, name: str) -> list[str]:
        address = CONTROLLERS[name]
        cert = pki.cert_paths(self.pki_dir, "controller", name)
        argv = self.telltale(
            "--log-level", self.log_level,
            "controller",
            "--listen", f"{address}:{API_PORT}",
            "--agent-listen", f"{address}:{AGENT_PORT}",
            "--tls-cert", str(cert.cert), "--tls-key", str(cert.key),
            "--tls-ca", str(self.pki_dir / pki.CA_CERT),
            "--etcd-endpoints", ",".join(self.etcd_endpoints),
            "--lease-ttl", str(self.lease_ttl),
            "--data-dir", str(self.workdir / name),
        )  # fmt: skip
        if name == "ctl-a":
            argv += ["--bootstrap-token-file", str(self.token_file)]
        return argv

    def _agent_argv(self, node: str) -> list[str]:
        cert = pki.cert_paths(self.pki_dir, "node", node)
        return self.telltale(
            "agent",
            "--controller", ",".join(self.agent_endpoints),
            "--socket", str(self.socket(node)),
            "--state-dir", str(self.state_dir(node)),
            "--tls-ca", str(self.pki_dir / pki.CA_CERT),
            "--tls-cert", str(cert.cert), "--tls-key", str(cert.key),
            "--enforcement", "on",
            "--log-level", "info" if self.log_level == "debug" else self.log_level,
            *self.agent_args,
            *self.node_args.get(node, []),
        )  # fmt: skip

    # -- processes -------------------------------------------------------------------------
    def _spawn(self, name: str, netns: str, argv: list[str]) -> None:
        self.argv[name], self.netns_of[name] = argv, netns
        self.log(name).parent.mkdir(parents=True, exist_ok=True)
        if name in self.nodes:
            self.socket(name).parent.mkdir(parents=True, exist_ok=True)
        cmd = network.inside(netns, argv)
        with self.log(name).open("ab") as log:
            process = subprocess.Popen(
                cmd if self.detached else tied_to_parent(cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.popen[name] = process
        self.state.processes[name] = Process(process.pid, netns, argv, str(self.log(name)))
        self.state.save(self.state_file)

    def running(self, name: str) -> bool:
        """True while the daemon `name` runs."""
        popen = self.popen.get(name)
        if popen is not None:
            return popen.poll() is None
        process = self.state.processes.get(name)
        return process is not None and ours(process.pid, str(self.workdir))

    def _check_alive(self, name: str) -> bool:
        """False while `name` runs (so `_check_alive(n) or ready()` polls readiness); ClusterError
        with its log tail once it exited."""
        if not self.running(name):
            raise ClusterError(f"{name} exited:\n{self.log_tail(name)}")
        return False

    def start(self, name: str, timeout: float = 60.0) -> None:
        """Start daemon `name` (again) and wait until it is ready: a controller SERVING, an etcd
        member healthy, an agent listening on its shim socket. ClusterError with its log tail."""
        if self.running(name):
            raise ClusterError(f"{name} is running already")
        if name in CONTROLLERS:
            argv = self._controller_argv(name)
        elif name in ETCD:
            argv = self._etcd_argv(name)
        elif name in self.nodes:
            argv = self._agent_argv(name)
        else:
            raise KeyError(name)
        self._spawn(name, self.netns(name), argv)
        try:
            if name in CONTROLLERS:
                wait_until(lambda: self._check_alive(name) or self.serving(name), timeout, f"{name} to serve")
            elif name in ETCD:
                wait_until(lambda: self._check_alive(name) or self._etcd_healthy(), timeout, f"{name}")
            else:
                self._wait_agent(name, timeout)
        except TimeoutError as exc:
            raise ClusterError(f"{exc}:\n{self.log_tail(name)}") from None

    def _wait_agent(self, node: str, timeout: float = 60.0) -> None:
        from telltale.nodeagent.launch import agent_listening

        def listening() -> bool:
            self._check_alive(node)
            return agent_listening(self.socket(node))

        wait_until(listening, timeout, f"the agent of {node} to listen")

    def stop(self, name: str, timeout: float = 15.0) -> None:
        """Stop daemon `name` with SIGTERM (SIGKILL after `timeout`) and wait until it is gone."""
        self._end(name, timeout)

    def kill(self, name: str) -> None:
        """End daemon `name` as `kill -9` does (no cleanup) and wait until it is gone."""
        self._end(name, 0.0)

    def _end(self, name: str, timeout: float) -> None:
        process = self.state.processes[name]
        if ours(process.pid, str(self.workdir)):
            if timeout:
                end([process.pid], timeout)
            else:
                os.killpg(process.pid, 9)
        wait_until(lambda: not alive(process.pid), 10, f"{name} to exit")
        popen = self.popen.pop(name, None)
        if popen is not None:
            popen.wait()

    # -- health ----------------------------------------------------------------------------
    def _etcd_healthy(self) -> bool:
        from telltale.controller.etcd import find_etcd_binary

        ctl = str(Path(find_etcd_binary()).with_name("etcdctl"))
        cmd = [ctl, "--endpoints", ",".join(self.etcd_endpoints), "endpoint", "health", "--dial-timeout=1s"]
        done = subprocess.run(network.inside(self.hub, cmd), capture_output=True, timeout=20, check=False)
        return done.returncode == 0

    def serving(self, controller: str) -> bool:
        """True when `controller` answers its health check with SERVING."""
        with self.channel(controller, token=False) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(HEALTH, timeout=1)
            except grpc.RpcError:
                return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def list_nodes(self, controller: str = "") -> list[inventory_pb2.Node]:
        """The inventory's nodes, through `controller` (default: the first one serving)."""
        names = [controller] if controller else [c for c in CONTROLLERS if self.running(c)]
        for i, name in enumerate(names):
            try:
                with self.channel(name) as channel:
                    stub = inventory_pb2_grpc.InventoryServiceStub(channel)
                    pages = every_page(stub.ListNodes, inventory_pb2.ListNodesRequest(), timeout=5)
                    return [n for page in pages for n in page.nodes]
            except grpc.RpcError:
                if i == len(names) - 1:
                    raise
        return []

    def online(self) -> set[str]:
        """The ids of the nodes the inventory shows online."""
        try:
            nodes = self.list_nodes()
        except grpc.RpcError:
            return set()
        return {n.node_id for n in nodes if n.liveness == inventory_pb2.NODE_LIVENESS_ONLINE}

    def wait_online(self, nodes: Sequence[str], timeout: float = 60.0) -> None:
        """Wait until every one of `nodes` shows online in the inventory."""
        wait_until(lambda: set(nodes) <= self.online(), timeout, f"{', '.join(nodes)} online")

    # -- clients ---------------------------------------------------------------------------
    def admin_token(self) -> str:
        return self.token_file.read_text().strip()

    def channel(self, controller: str = "ctl-a", *, token: str | bool = True) -> grpc.Channel:
        """A TLS channel to `controller`'s API through the relay, carrying the admin token (or the
        token given; none with `token=False`). Close it after use (it is a context manager)."""
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(self.pki_dir / pki.CA_CERT).read_bytes()
        )
        bearer = self.admin_token() if token is True else token
        if bearer:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(str(bearer))
            )
        return grpc.secure_channel(
            f"unix:{self.api_socket(controller)}",
            credentials,
            options=[("grpc.ssl_target_name_override", controller), ("grpc.use_local_subchannel_pool", 1)],
        )

    def cli_env(self, controller: str = "ctl-a") -> dict[str, str]:
        """The environment the `telltale` CLI needs (inside the hub or a node namespace)."""
        return {
            "TELLTALE_CONTROLLER": f"{CONTROLLERS[controller]}:{API_PORT}",
            "TELLTALE_CA": str(self.pki_dir / pki.CA_CERT),
            "TELLTALE_TOKEN_FILE": str(self.token_file),
        }

    def cli(
        self, *args: str, controller: str = "ctl-a", timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `telltale ARGS` inside the hub against `controller`; output captured."""
        return subprocess.run(
            network.inside(self.hub, self.telltale(*args)),
            env={**os.environ, **self.cli_env(controller)},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def workload_argv(self, node: str, app: str, command: Sequence[str], *extra: str) -> list[str]:
        """The command line that runs `command` as a workload of `app` on `node`, under the shim."""
        run = self.telltale("run", "--app", app, "--socket", str(self.socket(node)), *extra, "--", *command)
        return network.inside(self.netns(node), run)

    def run_workload(
        self, node: str, app: str, command: Sequence[str], *extra: str, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` on `node` as a workload of `app` (`telltale run` inside its namespace)."""
        return subprocess.run(
            self.workload_argv(node, app, command, *extra),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def inside(self, node: str, *cmd: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside `node`'s namespace (or the hub's); output captured, not checked."""
        return subprocess.run(
            network.inside(self.netns(node), cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    # -- faults ----------------------------------------------------------------------------
    def cut(self, node: str, how: str = "link") -> None:
        """Cut `node` off the network: its link down ("link"), or an nftables table inside its
        namespace dropping everything to and from the cluster's subnet ("nft"), or the same
        answering its TCP with resets ("reject": the agent's stream breaks at once).

        With "link" and "nft" an established TCP connection survives a short cut (the kernel
        retransmits), so what the agent wrote before and during the cut may still arrive."""
        if how == "link":
            network.set_link(self.netns(node), up=False)
        elif how in ("nft", "reject"):
            network.cut_with_nftables(
                self.netns(node), f"{SUBNET}.0/24", self.address(node), reject=how == "reject"
            )
        else:
            raise ValueError(f"how must be 'link', 'nft' or 'reject', not {how!r}")

    def heal(self, node: str) -> None:
        """Undo `cut` (either way)."""
        network.heal_nftables(self.netns(node))
        network.set_link(self.netns(node), up=True)
