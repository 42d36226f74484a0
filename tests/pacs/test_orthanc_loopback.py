"""The test Orthanc is reachable from this machine only: on 127.0.0.1, not on any other address of the machine."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import urllib.request

import pytest


def _addresses() -> set[str]:
    """This machine's IPv4 addresses other than loopback."""
    found: set[str] = set()
    try:
        out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=10).stdout
        found |= {line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3}
    except (OSError, subprocess.SubprocessError):
        pass
    with contextlib.suppress(OSError):
        found |= set(socket.gethostbyname_ex(socket.gethostname())[2])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # the outgoing address (nothing is sent)
            s.connect(("192.0.2.1", 9))
            found.add(s.getsockname()[0])
    except OSError:
        pass
    return {a for a in found if not a.startswith("127.") and a != "0.0.0.0"}


def test_orthanc_answers_on_loopback_only(orthanc) -> None:
    with urllib.request.urlopen(f"{orthanc.url}/studies", timeout=10) as r:
        assert r.status == 200
    addresses = _addresses()
    if not addresses:
        pytest.skip("this machine has no address other than loopback to try")
    for address in sorted(addresses):
        try:
            conn = socket.create_connection((address, orthanc.port), timeout=5)
        except OSError:
            continue  # refused: nothing listens there
        with conn:
            conn.sendall(f"GET /dicom-web/studies HTTP/1.0\r\nHost: {address}:{orthanc.port}\r\n\r\n".encode())
            status = conn.recv(1 << 12).split(b"\r\n", 1)[0]
        assert not orthanc.isolated, f"the isolated Orthanc answered on {address}: {status!r}"
        assert status.split(b" ")[1:2] in ([b"401"], [b"403"]), f"Orthanc on {address} answered {status!r}"
        pytest.skip(f"network namespaces are not allowed here: Orthanc 1.10 listens on {address} too and only "
                    f"refuses its requests ({status.decode(errors='replace')})")
