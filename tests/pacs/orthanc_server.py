"""Start and stop a throw-away Orthanc (DICOMweb plugin on, DICOM port off, remote access refused) on a free
loopback port with its storage in a given folder. Used by the PACS tests and by benchmarks/dicomweb_read.py.

Orthanc 1.10 (Debian 12) has no bind-address option: ``HttpPort`` must be an integer and its HTTP server listens
on every interface. So that the test server is reachable from this machine only, it runs in a private network
namespace (``unshare --net``, with ``--map-root-user`` when not root) whose only interface is loopback, and two
small relays carry its HTTP port out: one inside the namespace from a Unix socket to Orthanc, one here from
``127.0.0.1:PORT`` to that socket. Where namespaces are not allowed, Orthanc runs directly (``isolated`` is
False) and ``RemoteAccessAllowed: false`` is what keeps other hosts out: Orthanc answers them 401.

Run as a script (``python orthanc_server.py --in-namespace CONFIG SOCKET PORT``), this file is the namespace side.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class OrthancServer:
    url: str  # the DICOMweb root, e.g. http://127.0.0.1:PORT/dicom-web
    root: Path
    process: subprocess.Popen = field(repr=False)
    isolated: bool = False  # in a private network namespace, reachable only through the loopback relay
    relay: _Relay | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return int(self.url.split(":")[2].split("/")[0])

    def address(self, study: str, series: str | None = None) -> str:
        tail = f"/series/{series}" if series else ""
        return f"dicomweb+{self.url}/studies/{study}{tail}"

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.close()
        _stop(self.process)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc")


def dicomweb_plugin() -> str | None:
    """The DICOMweb plugin's shared library, from the Debian package's file list."""
    try:
        listed = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        listed = ""
    candidates = [line for line in listed.splitlines() if "DicomWeb" in line and ".so" in line]
    candidates += [str(p) for p in Path("/usr/share/orthanc/plugins").glob("*DicomWeb*.so*")]
    return next((c for c in candidates if Path(c).is_file()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unshare_command() -> list[str] | None:
    """The ``unshare`` command line that gives a child a private network namespace here, or None."""
    binary = shutil.which("unshare")
    if binary is None:
        return None
    command = [binary, "--net"] if os.geteuid() == 0 else [binary, "--net", "--map-root-user"]
    try:
        ok = subprocess.run([*command, "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return command if ok else None


# ----- byte relays ------------------------------------------------------------------------------------------------
def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (dst, src):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _serve(listener: socket.socket, connect) -> None:
    """Accept on ``listener``; join each client to ``connect()`` both ways (a thread per direction)."""
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = connect()
        except OSError:
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


class _Relay:
    """``127.0.0.1:port`` here → the namespace's Unix socket."""

    def __init__(self, port: int, unix_path: str) -> None:
        self.unix_path = unix_path
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(64)

        def connect() -> socket.socket:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(unix_path)
            return s

        threading.Thread(target=_serve, args=(self.listener, connect), daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        shutil.rmtree(Path(self.unix_path).parent, ignore_errors=True)


def _loopback_up() -> None:
    """Bring up ``lo`` (down in a new network namespace): SIOCGIFFLAGS / SIOCSIFFLAGS with IFF_UP."""
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH22x", b"lo", 0))[:18])[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", flags | 0x1))


def _die_with_parent() -> None:
    """Be sent SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG), so that a killed test leaves no server."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _namespace_main(config: str, unix_path: str, port: int) -> None:
    """Inside the namespace: loopback up, Orthanc started, its port relayed to ``unix_path`` until terminated."""
    _die_with_parent()
    _loopback_up()
    binary = orthanc_binary() or "Orthanc"
    log = open(Path(config).parent / "orthanc.log", "w")  # noqa: SIM115 (open for Orthanc's lifetime)
    orthanc = subprocess.Popen([binary, config], stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(unix_path)
    listener.listen(64)
    threading.Thread(target=_serve, args=(listener, lambda: socket.create_connection(("127.0.0.1", port))),
                     daemon=True).start()

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    while orthanc.poll() is None and not stopping.wait(0.2):
        pass
    _stop(orthanc)
    sys.exit(0 if stopping.is_set() else orthanc.returncode)


# ----- start ------------------------------------------------------------------------------------------------------
def start_orthanc(root: Path, lua: str | None = None, timeout: float = 60, isolate: bool = True) -> OrthancServer:
    """Start Orthanc with storage under ``root`` and wait until its DICOMweb API answers on 127.0.0.1; in a
    private network namespace unless ``isolate`` is False or namespaces are not allowed. RuntimeError if it does
    not start."""
    binary, plugin = orthanc_binary(), dicomweb_plugin()
    if binary is None or plugin is None:
        raise RuntimeError("Orthanc and its DICOMweb plugin are needed: apt-get install orthanc orthanc-dicomweb")
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = {
        "Name": "medfoundry-local", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
        "HttpPort": port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomServerEnabled": False, "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{port}"},
    }
    if lua:
        (root / "script.lua").write_text(lua)
        config["LuaScripts"] = [str(root / "script.lua")]
    (root / "orthanc.json").write_text(json.dumps(config))
    unshare = _unshare_command() if isolate else None
    relay = None
    if unshare is not None:
        sock_dir = tempfile.mkdtemp(prefix="mf-orthanc-")  # short: a Unix socket path has at most 107 bytes
        unix_path = str(Path(sock_dir) / "http.sock")
        proc = subprocess.Popen([*unshare, sys.executable, str(Path(__file__).resolve()), "--in-namespace",
                                 str(root / "orthanc.json"), unix_path, str(port)],
                                stdout=subprocess.DEVNULL, stderr=open(root / "namespace.log", "w"))  # noqa: SIM115
        relay = _Relay(port, unix_path)
    else:
        with open(root / "orthanc.log", "w") as log:
            proc = subprocess.Popen([binary, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/dicom-web"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/studies", timeout=2) as r:
                if r.status == 200:
                    return OrthancServer(url, root, proc, isolated=unshare is not None, relay=relay)
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            if relay is not None:
                relay.close()
            _stop(proc)
            logs = "".join(p.read_text()[-2000:] for p in (root / "namespace.log", root / "orthanc.log") if p.exists())
            raise RuntimeError(f"Orthanc did not start: {logs}")
        time.sleep(0.2)


if __name__ == "__main__" and sys.argv[1:2] == ["--in-namespace"]:
    _namespace_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
