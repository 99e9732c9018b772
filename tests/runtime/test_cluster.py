"""A Ray instance started with `ray start --head` on this machine is found (and reused); a stale address is not."""

from __future__ import annotations

import socket

from djray.runtime.cluster import running_local_instance


def test_a_listening_local_instance_is_found_and_a_stale_one_is_not(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    current = tmp_path / "ray_current_cluster"
    try:
        current.write_text(f"127.0.0.1:{port}")
        assert running_local_instance(str(current))
    finally:
        server.close()
    assert not running_local_instance(str(current))  # nobody listens any more
    assert not running_local_instance(str(tmp_path / "absent"))
    current.write_text("garbage")
    assert not running_local_instance(str(current))
