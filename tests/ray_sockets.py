"""Listening sockets of a set of processes, read from /proc (Linux): where a Ray cluster listens."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

LISTEN = "0A"


def _address(hexed: str, v6: bool) -> str:
    if not v6:
        return socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(hexed, 16)))
    raw = bytes.fromhex(hexed)
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def _socket_owners(pids: set[int]) -> dict[str, int]:
    owners = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    owners[target[8:-1]] = pid
        except OSError:
            continue
    return owners


def listening(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket these processes listen on."""
    owners = _socket_owners(pids)
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == LISTEN and inode in owners:
                host, port = local.split(":")
                found.append((owners[inode], _address(host, v6), int(port, 16)))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback
