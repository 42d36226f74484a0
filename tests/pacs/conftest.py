"""A real Orthanc with its DICOMweb plugin on a free loopback port, for the whole session (skipped only when the
Orthanc binary is absent).

Orthanc 1.10 has no bind-address option and listens on every interface; the generated configuration disables
remote access (requests from any other address are refused), authentication is not needed from loopback, and the
DICOM (DIMSE) port is off.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("dicomweb_client")

#: instances with this Patient ID and modality SR are refused by the server's Lua filter (tests of STOW refusals)
REFUSED_PATIENT = "STOW-REFUSED"
_LUA = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.PatientID == '{REFUSED_PATIENT}' and dicom.Modality == 'SR' then
    return false
  end
  return true
end
"""


@dataclass
class OrthancServer:
    url: str  # the DICOMweb root, e.g. http://127.0.0.1:PORT/dicom-web
    root: Path

    def address(self, study: str, series: str | None = None) -> str:
        tail = f"/series/{series}" if series else ""
        return f"dicomweb+{self.url}/studies/{study}{tail}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plugin() -> str | None:
    try:
        listed = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        listed = ""
    candidates = [line for line in listed.splitlines() if "DicomWeb" in line and ".so" in line]
    candidates += [str(p) for p in Path("/usr/share/orthanc/plugins").glob("*DicomWeb*.so*")]
    return next((c for c in candidates if Path(c).is_file()), None)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory) -> OrthancServer:
    binary = shutil.which("Orthanc")
    if binary is None:
        pytest.skip("the Orthanc binary is not installed (apt-get install orthanc orthanc-dicomweb)")
    plugin = _plugin()
    assert plugin, "Orthanc is installed but its DICOMweb plugin is not: apt-get install orthanc-dicomweb"
    root = tmp_path_factory.mktemp("orthanc")
    (root / "filter.lua").write_text(_LUA)
    port = _free_port()
    config = {
        "Name": "medfoundry-tests", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
        "HttpPort": port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomServerEnabled": False, "Plugins": [plugin], "LuaScripts": [str(root / "filter.lua")],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{port}"},
        "HttpTimeout": 60, "StableAge": 1,
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = open(root / "orthanc.log", "w")  # noqa: SIM115 (closed after the server stops)
    proc = subprocess.Popen([binary, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/dicom-web"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/studies", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail(f"Orthanc did not start: {(root / 'orthanc.log').read_text()[-2000:]}")
        time.sleep(0.2)
    try:
        yield OrthancServer(url, root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
