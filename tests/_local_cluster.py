"""A real multi-node Ray cluster on this machine, for tests/test_multinode.py: a head and worker nodes, each its
own raylet (Ray's `ray.cluster_utils.Cluster`), run as a separate process so that it never meets the test
session's own Ray instance. The caller's environment gives it a private RAY_TMPDIR and token auth
(RAY_AUTH_MODE=token, RAY_AUTH_TOKEN).

Prints one JSON line when the cluster is up ({"address", "dashboard", "nodes": {name: node id}}), then takes one
command a line on stdin and answers each with one JSON line:
  remove NAME   the node's raylet and every process on it killed at once (a node lost, not a process)
  add NAME      a new worker node like the others
  quit          (or end of input) the whole cluster shut down
"""

import json
import socket
import sys

from ray.cluster_utils import Cluster

HEAD = {"num_cpus": 2, "resources": {"head": 1}}  # the drivers, Tune's trainables and Ray Data
WORKER = {"num_cpus": 1, "resources": {"trainer": 1}}  # one Train worker each (train.worker_resources)
STORE = 200 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **HEAD,
            "object_store_memory": STORE,
            "include_dashboard": True,  # `ray job submit` needs it
            "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port(),
            # not Ray's default agent port, which the test session's own Ray instance holds: the head's agent
            # could not start, and every job submission got "No available agent to submit job"
            "dashboard_agent_listen_port": free_port(),
            # a lost node is declared dead within ~3 s instead of ~30 s
            "_system_config": {
                "health_check_initial_delay_ms": 0,
                "health_check_period_ms": 1000,
                "health_check_failure_threshold": 3,
            },
        },  # fmt: skip
    )
    nodes = {"head": cluster.head_node}

    def add(name: str) -> None:
        nodes[name] = cluster.add_node(**WORKER, object_store_memory=STORE)

    add("w1")
    add("w2")
    cluster.wait_for_nodes()

    def say(**kw) -> None:
        print(json.dumps(kw), flush=True)

    say(address=cluster.address, dashboard=cluster.webui_url, nodes={k: n.node_id for k, n in nodes.items()})
    try:
        for line in sys.stdin:
            cmd, *args = line.split() or [""]
            if cmd == "quit":
                break
            try:
                if cmd == "remove" and args[0] in nodes and args[0] != "head":
                    cluster.remove_node(nodes.pop(args[0]), allow_graceful=False)
                    say(removed=args[0])
                elif cmd == "add" and args[0] not in nodes:
                    add(args[0])
                    cluster.wait_for_nodes()
                    say(added=args[0], node_id=nodes[args[0]].node_id)
                else:
                    say(error=f"cannot do {line.strip()!r} (nodes: {sorted(nodes)})")
            except Exception as exc:  # the cluster stays up for the next command
                say(error=f"{line.strip()!r} failed: {exc!r}")
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
