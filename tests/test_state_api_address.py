"""The sweep asks its own cluster's dashboard, never the newest cluster `ray start` recorded.

Ray's state API, given no address, reads ``RAY_TMPDIR/ray/ray_current_cluster``: beside another
local Ray (or a killed `ray start` head, which leaves that file naming a dead address) it asked
that one, and `tune` refused to run ("Ray's dashboard (state API) is not answering").
"""

from __future__ import annotations

import os
import socket
import tempfile

from asaptrain.sweep.tune import dashboard_ok, dashboard_url, this_cluster_state_api


def _dead_address() -> str:
    with socket.socket() as s:  # a port nothing listens on once the socket is closed
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_dashboard_check_asks_the_connected_cluster(ray_cluster, monkeypatch):
    other = tempfile.mkdtemp(prefix="rt-")
    os.makedirs(os.path.join(other, "ray"))
    with open(os.path.join(other, "ray", "ray_current_cluster"), "w") as fh:
        fh.write(_dead_address())  # what a killed `ray start` head leaves behind
    monkeypatch.setenv("RAY_TMPDIR", other)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    url = dashboard_url()
    assert url and url.startswith("http://")
    assert dashboard_ok()
    with this_cluster_state_api() as inside:
        from ray.util.state import list_nodes

        node_ids = {n.node_id for n in list_nodes(timeout=10)}
        assert inside == url
    assert node_ids == {ray_cluster.get_runtime_context().get_node_id()}
    assert "RAY_API_SERVER_ADDRESS" not in os.environ
