"""A real Orthanc with its DICOMweb plugin on a free loopback port for the whole session (orthanc_server.py);
skipped only when the Orthanc binary is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("dicomweb_client")
sys.path.insert(0, str(Path(__file__).parent))

from orthanc_server import OrthancServer, dicomweb_plugin, orthanc_binary, start_orthanc

#: instances with this Patient ID and modality SR are discarded by the server's Lua filter (STOW refusals)
REFUSED_PATIENT = "STOW-REFUSED"
_LUA = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.PatientID == '{REFUSED_PATIENT}' and dicom.Modality == 'SR' then
    return false
  end
  return true
end
"""


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory) -> OrthancServer:
    if orthanc_binary() is None:
        pytest.skip("the Orthanc binary is not installed (apt-get install orthanc orthanc-dicomweb)")
    assert dicomweb_plugin(), "Orthanc is installed but its DICOMweb plugin is not: apt-get install orthanc-dicomweb"
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"), lua=_LUA)
    try:
        yield server
    finally:
        server.stop()
