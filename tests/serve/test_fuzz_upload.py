"""Hostile uploads: the upload route answers every mutated file with success or a 4xx JSON error, previews of
what it accepted render, and the server stays alive. The full corpus runs in ``tools/fuzz_readers.py``."""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from medfoundry.io import fuzz
from medfoundry.serve.app import create_app
from medfoundry.serve.workbench import Workbench

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    bench = Workbench(store=tmp_path_factory.mktemp("store"), max_upload_bytes=4 << 20, max_images=4)
    with TestClient(create_app(bench), raise_server_exceptions=False) as c:
        yield c
    bench.close()


def _check(client: TestClient, name: str, data: bytes) -> int:
    r = client.post("/v1/images", files={"file": (name, data, "application/octet-stream")})
    if r.status_code == 200:
        image_id = r.json()["id"]
        preview = client.get(f"/v1/images/{image_id}/preview.png")
        assert preview.status_code == 200 and preview.content[:4] == b"\x89PNG", (name, preview.text[:200])
    else:
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
        body = r.json()
        assert set(body) >= {"error", "detail"} or "detail" in body, body
    return r.status_code


def test_mutated_corpus_uploads_get_success_or_4xx_json(client: TestClient) -> None:
    rng = random.Random(21)
    corpus = fuzz.package_corpus()
    statuses = []
    for _ in range(60):
        source = rng.choice(corpus)
        data = fuzz.MUTATIONS[rng.choice(sorted(fuzz.MUTATIONS))](source.read_bytes(), rng)
        statuses.append(_check(client, fuzz.mutated_name(source, rng, lie=0.3), data))
    assert 200 in statuses and any(400 <= s < 500 for s in statuses)
    assert client.get("/v1/health").json()["status"] == "ok"


def test_hostile_names_sizes_and_archives(client: TestClient) -> None:
    from pydicom.data import get_testdata_file

    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert _check(client, "../../../etc/passwd.dcm", ct) == 200
    assert _check(client, "x" * 5000 + ".nii.gz", ct) == 400
    assert _check(client, "", b"\x00") in (400, 422)  # no file name: FastAPI sees no file
    assert _check(client, "big.dcm", bytes(5 << 20)) == 413
    series = io.BytesIO()
    with zipfile.ZipFile(series, "w") as z:
        z.writestr("../../x/1.dcm", ct)
    assert _check(client, "series.zip", series.getvalue()) == 200
    assert client.get("/v1/health").json()["status"] == "ok"


def test_zip_bomb_upload_is_refused(client: TestClient, monkeypatch) -> None:
    monkeypatch.setenv("MEDFOUNDRY_MAX_EXPANDED_BYTES", str(16 << 20))
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for k in range(4):
            z.writestr(f"{k}.dcm", bytes(8 << 20))
    r = client.post("/v1/images", files={"file": ("bomb.zip", bomb.getvalue(), "application/zip")})
    assert r.status_code == 400 and "over the 16.0 MiB limit" in r.json()["detail"]
    assert client.get("/v1/health").json()["status"] == "ok"
