"""Start and stop a throw-away Orthanc (DICOMweb plugin on, DICOM port off, remote access refused) on a free
loopback port with its storage in a given folder. Used by the PACS tests and by benchmarks/dicomweb_read.py.

Orthanc 1.10 has no bind-address option and listens on every interface; with ``RemoteAccessAllowed: false`` it
refuses every request that does not come from the loopback address.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class OrthancServer:
    url: str  # the DICOMweb root, e.g. http://127.0.0.1:PORT/dicom-web
    root: Path
    process: subprocess.Popen = field(repr=False)

    def address(self, study: str, series: str | None = None) -> str:
        tail = f"/series/{series}" if series else ""
        return f"dicomweb+{self.url}/studies/{study}{tail}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


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


def start_orthanc(root: Path, lua: str | None = None, timeout: float = 60) -> OrthancServer:
    """Start Orthanc with storage under ``root`` and wait until its DICOMweb API answers; RuntimeError if not."""
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
    with open(root / "orthanc.log", "w") as log:
        proc = subprocess.Popen([binary, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/dicom-web"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/studies", timeout=2) as r:
                if r.status == 200:
                    return OrthancServer(url, root, proc)
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"Orthanc did not start: {(root / 'orthanc.log').read_text()[-2000:]}")
        time.sleep(0.2)
