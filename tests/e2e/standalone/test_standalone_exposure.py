"""What the session's real ``airflow standalone``, started as ``make airflow-ui`` starts it, exposes: its API
server on loopback only, and the password file Airflow generated readable by its owner only."""

from __future__ import annotations

import stat
from urllib.parse import urlsplit

import psutil
import pytest

from tests.e2e.conftest import BIND_HOST, Airflow

pytestmark = [pytest.mark.e2e, pytest.mark.scheduler]


def test_the_generated_password_file_is_readable_by_its_owner_only(standalone: Airflow) -> None:
    mode = stat.S_IMODE(standalone.passwords_file.stat().st_mode)
    assert mode == 0o600, oct(mode)


def test_the_api_server_listens_on_loopback_only(standalone: Airflow, standalone_launch) -> None:
    bound = listening_ports(standalone_launch.started().pid)
    port = int(urlsplit(standalone.url).port or 0)
    assert bound[port] == {BIND_HOST}, bound


def listening_ports(pid: int) -> dict[int, set[str]]:
    """The TCP ports the process ``pid`` and its descendants listen on, with the addresses each is bound to."""
    leader = psutil.Process(pid)
    bound: dict[int, set[str]] = {}
    for process in [leader, *leader.children(recursive=True)]:
        try:
            connections = process.net_connections("tcp")
        except psutil.Error:
            continue
        for connection in connections:
            if connection.status == psutil.CONN_LISTEN:
                bound.setdefault(connection.laddr.port, set()).add(connection.laddr.ip)
    return bound
