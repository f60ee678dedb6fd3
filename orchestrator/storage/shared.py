"""Results must land where the driver reads them: refuse storage the workers cannot all see.

A local ``--storage`` directory is only valid when every node that runs trials sees the
same directory (one machine, or a shared mount such as NFS). :func:`check_shared` writes a
marker file from the driver and looks for it from every alive node (a zero-CPU Ray task
pinned to the node); :func:`assert_marker` runs in each trial, so a node that joins later
(autoscaling) fails its trial with the same message instead of writing rows nobody reads.
Object stores (``s3://``, ``gs://``) are shared by construction.
"""

from __future__ import annotations

import contextlib
import os
import uuid

from orchestrator.storage import layout

__all__ = ["StorageNotSharedError", "assert_marker", "check_shared", "remove_marker"]


class StorageNotSharedError(ValueError):
    """A local storage directory that not every node sees."""


def _message(storage: str, where: str) -> str:
    return (
        f"--storage {storage!r} is not the same directory on every node ({where}): trial rows and "
        "checkpoints would scatter over the nodes' disks. Pass --storage s3://BUCKET/PREFIX (or set "
        "metadata.jiio.storage in the cluster config), or a directory on a shared mount (NFS)"
    )


def check_shared(storage: str, base: str, sweep: str) -> str | None:
    """Write a marker under ``base`` and check every alive Ray node sees it; the marker's
    path (for :func:`assert_marker` in trials), or None for object storage.

    Raises :class:`StorageNotSharedError` naming the nodes that do not see it.
    """
    if layout.is_uri(storage):
        return None
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker = layout.shared_marker(base, sweep, uuid.uuid4().hex)
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    with open(marker, "w") as f:
        f.write("written by the sweep driver; every node must see this file\n")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> tuple[str, bool]:
        import socket

        return socket.gethostname(), os.path.exists(path)

    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here]
    refs = [
        sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            marker
        )
        for n in nodes
    ]
    blind = []
    for node, ref in zip(nodes, refs, strict=True):
        host, ok = ray.get(ref, timeout=120)
        if not ok:
            blind.append(f"{node.get('NodeManagerAddress', '?')} ({host})")
    if blind:
        remove_marker(marker)
        raise StorageNotSharedError(
            _message(storage, "node " + ", ".join(blind) + " does not see the driver's files")
        )
    return marker


def assert_marker(storage: str, marker: str | None) -> None:
    """In a trial: fail at once, with the reason, on a node that does not see the driver's files."""
    if marker and not os.path.exists(marker):
        import socket

        raise StorageNotSharedError(
            _message(storage, f"this node, {socket.gethostname()}, does not see {marker}")
        )


def remove_marker(marker: str | None) -> None:
    """Delete the marker the driver wrote (at the end of the sweep, or when the check failed)."""
    if marker:
        with contextlib.suppress(FileNotFoundError):
            os.remove(marker)
