"""The /v1 API: token, CORS, content sniffing, size limit, time-to-live, locks, mask formats and error cases."""

from __future__ import annotations

import io
import logging
import threading
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from medfoundry.errors import InputContractError
from medfoundry.serve.app import create_app
from medfoundry.serve.masks import rle_decode, rle_encode
from medfoundry.serve.security import resolve_token
from medfoundry.serve.store import sniff_suffix
from medfoundry.serve.views import plane_values, view_info
from medfoundry.serve.workbench import Workbench
from medfoundry.tasks.measure import axis_endpoints

TOKEN = "s3cret-token-0123456789"


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _picture() -> np.ndarray:
    arr = np.random.default_rng(0).integers(0, 60, (128, 160, 3), dtype=np.uint8)
    arr[30:90, 40:120] = (230, 120, 110)
    return arr


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    bench = Workbench(store=tmp_path_factory.mktemp("store"), max_upload_bytes=1 << 20, max_images=8)
    with TestClient(create_app(bench), raise_server_exceptions=False) as c:
        yield c
    bench.close()


def _ct_volume(tmp: Path) -> bytes:
    zz, yy, xx = np.mgrid[0:7, 0:64, 0:64]
    ball = (zz - 3) ** 2 * 16 + (yy - 32) ** 2 + (xx - 32) ** 2 <= 14**2
    ct = np.where(ball, 60.0, -100.0).astype(np.float32)
    nib.save(nib.Nifti1Image(np.transpose(ct, (2, 1, 0)), np.diag([1.0, 1.0, 3.0, 1.0])), tmp / "ct.nii.gz")
    return (tmp / "ct.nii.gz").read_bytes()


# -- safe defaults ---------------------------------------------------------------------------------------
def test_token_is_required_on_every_route_when_given(tmp_path: Path) -> None:
    bench = Workbench(store=tmp_path / "s")
    with TestClient(create_app(bench, token=TOKEN)) as c:
        for path in ("/", "/v1/health", "/api/health", "/openapi.json", "/static/viewer.js", f"/v1/images/{'0' * 24}"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"] == "Unauthorized", path
        assert c.post("/v1/images", files={"file": ("x.png", _png(_picture()))}).status_code == 401
        assert c.get("/v1/health", headers={"Authorization": "Bearer wrong-token-000000000"}).status_code == 401
        assert c.get("/v1/health", headers={"Authorization": f"Bearer {TOKEN}"}).json()["status"] == "ok"
        opened = c.get(f"/?token={TOKEN}", follow_redirects=False)  # the browser's way in: a cookie
        assert opened.status_code == 303 and "httponly" in opened.headers["set-cookie"].lower()
        assert c.get("/v1/health").status_code == 200  # the client now holds the cookie
    bench.close()
    assert len(list((tmp_path / "s").iterdir())) == 0


def test_binding_elsewhere_needs_a_token(monkeypatch) -> None:
    monkeypatch.delenv("MEDFOUNDRY_TOKEN", raising=False)
    assert resolve_token("127.0.0.1", None) is None and resolve_token("::1", None) is None
    with pytest.raises(InputContractError, match="token"):
        resolve_token("0.0.0.0", None)
    with pytest.raises(InputContractError, match="16 characters"):
        resolve_token("0.0.0.0", "short")
    monkeypatch.setenv("MEDFOUNDRY_TOKEN", TOKEN)
    assert resolve_token("10.1.2.3", None) == TOKEN


def test_cors_is_off_unless_configured(client: TestClient, tmp_path: Path) -> None:
    r = client.get("/v1/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers and r.headers["x-content-type-options"] == "nosniff"
    bench = Workbench(store=tmp_path / "s")
    with TestClient(create_app(bench, cors_origins=["https://pacs.example"])) as c:
        ok = c.get("/v1/health", headers={"Origin": "https://pacs.example"})
        other = c.get("/v1/health", headers={"Origin": "https://evil.example"})
    assert ok.headers["access-control-allow-origin"] == "https://pacs.example"
    assert "access-control-allow-origin" not in other.headers
    bench.close()


def test_logs_hold_no_names_or_queries(client: TestClient, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="medfoundry.serve"):
        up = client.post("/v1/images", files={"file": ("Doe^John_1970.png", _png(_picture()))}).json()
        client.get(f"/v1/images/{up['id']}/preview.png", params={"window": "lung", "size": 64})
    text = caplog.text
    assert "/v1/images/{image_id}/preview.png" in text and "Doe" not in text and "lung" not in text


# -- uploads ---------------------------------------------------------------------------------------------
def test_content_decides_the_format_not_the_name(client: TestClient) -> None:
    from pydicom.data import get_testdata_file

    assert sniff_suffix(_png(_picture())) == ".png" and sniff_suffix(b"<html>") == ""
    disguised = client.post("/v1/images", files={"file": ("scan.dcm", _png(_picture()[::-1].copy()))})
    assert disguised.status_code == 200 and disguised.json()["filename"] == "scan.dcm"
    store = client.app.state.workbench.store
    assert (store / f"{disguised.json()['id']}.png").is_file()
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    as_picture = client.post("/v1/images", files={"file": ("photo.jpg", ct)}).json()
    assert as_picture["summary"]["modality"] == "CT" and as_picture["dicom"] is True
    for name, data in (("x.png", b"<html><script>alert(1)</script></html>"), ("t.png", _png(_picture())[:200]),
                       ("a.nii.gz", b"\x1f\x8b\x08\x00" + b"\x00" * 40)):
        r = client.post("/v1/images", files={"file": (name, data)})
        assert r.status_code == 400 and set(r.json()) == {"error", "detail"}, (name, r.text)
    assert not list(store.glob("*.part"))


def test_sizes_zips_and_ids(client: TestClient, monkeypatch) -> None:
    store = client.app.state.workbench.store
    before = set(store.iterdir())
    big = client.post("/v1/images", files={"file": ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(2 << 20))})
    assert big.status_code == 413 and big.json()["error"] == "UploadTooLargeError"
    traversal = io.BytesIO()
    with zipfile.ZipFile(traversal, "w") as z:
        z.writestr("../../../../evil-traversal.png", _png(_picture()))
    r = client.post("/v1/images", files={"file": ("s.zip", traversal.getvalue())})
    landings = [folder / "evil-traversal.png" for folder in [store, *list(store.parents)[:6]]]
    assert r.status_code == 200 and not any(p.exists() for p in landings)
    monkeypatch.setenv("MEDFOUNDRY_MAX_EXPANDED_BYTES", str(1 << 20))
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("0.dcm", bytes(8 << 20))
    assert client.post("/v1/images", files={"file": ("b.zip", bomb.getvalue())}).status_code == 400
    assert set(store.iterdir()) - before == {store / f"{r.json()['id']}.zip"}  # nothing partial left
    same = client.post("/v1/images", files={"file": ("again.zip", traversal.getvalue())}).json()
    assert same["id"] == r.json()["id"]  # content hash: the same bytes are the same image
    for bad in ("../../etc/passwd", "0" * 24, "zz" * 12):
        got = client.get(f"/v1/images/{bad}")
        assert got.status_code == 404 and "error" in got.json()
    assert client.delete(f"/v1/images/{same['id']}").json() == {"deleted": True}
    assert client.get(f"/v1/images/{same['id']}").status_code == 404


def test_uploads_expire_and_their_files_go(tmp_path: Path) -> None:
    bench = Workbench(store=tmp_path / "s", ttl_seconds=0.3)
    with TestClient(create_app(bench)) as c:
        up = c.post("/v1/images", files={"file": ("x.png", _png(_picture()))}).json()
        assert c.get(f"/v1/images/{up['id']}").status_code == 200
        time.sleep(0.5)
        assert c.get(f"/v1/images/{up['id']}").status_code == 404
        assert bench.images.sweep() == 1 and not list((tmp_path / "s").iterdir())
    bench.close()


# -- planes, views, masks ----------------------------------------------------------------------------------
def test_views_planes_and_orientation_letters(client: TestClient, tmp_path: Path) -> None:
    info = client.post("/v1/images", files={"file": ("v.nii.gz", _ct_volume(tmp_path))}).json()
    views = info["views"]
    assert views["axial"]["slices"] == 7 and views["coronal"]["shape"] == [7, 64]
    assert views["axial"]["spacing_mm"] == [1.0, 1.0] and views["coronal"]["spacing_mm"] == [3.0, 1.0]
    # an identity NIfTI affine is RAS: columns run to the patient's right, rows to anterior; shown as stored
    assert views["axial"]["letters"] == {"top": "P", "bottom": "A", "left": "L", "right": "R"}
    assert views["coronal"]["letters"]["top"] == "S" and views["coronal"]["flipped"]  # head up
    assert views["sagittal"]["letters"]["left"] == "P"
    assert set(info["windows"]["presets"]) >= {"lung", "mediastinum", "bone", "brain", "abdomen", "liver"} or \
        info["summary"]["units"] != "HU"
    r = client.get(f"/v1/images/{info['id']}/planes/coronal/32")
    plane = np.frombuffer(r.content, "<f4").reshape(int(r.headers["X-Rows"]), int(r.headers["X-Cols"]))
    bench = client.app.state.workbench
    np.testing.assert_array_equal(plane, plane_values(bench.get(info["id"]).image, "coronal", 32))
    assert plane.shape == (7, 64) and plane.max() == 60
    assert client.get(f"/v1/images/{info['id']}/planes/oblique/0").status_code == 400
    assert client.get(f"/v1/images/{info['id']}/planes/axial/7").status_code == 400
    pic = client.post("/v1/images", files={"file": ("p.png", _png(_picture()))}).json()
    assert list(pic["views"]) == ["axial"] and view_info is not None
    rgb = client.get(f"/v1/images/{pic['id']}/planes/axial/0")
    assert rgb.headers["X-Channels"] == "3" and len(rgb.content) == 128 * 160 * 3


def test_rle_matches_pycocotools() -> None:
    mask = np.zeros((7, 5), bool)
    mask[0, 0] = mask[2:5, 1:4] = mask[6, 4] = True
    rle = rle_encode(mask)
    np.testing.assert_array_equal(rle_decode(rle), mask)
    coco = pytest.importorskip("pycocotools.mask")
    decoded = coco.decode(coco.frPyObjects(rle, *rle["size"]))
    np.testing.assert_array_equal(decoded.astype(bool), mask)
    axes = axis_endpoints(mask[2:5, 1:4], (1.0, 1.0))
    assert np.linalg.norm(np.subtract(*axes["long"])) == pytest.approx(np.hypot(3, 3))


def test_segment_errors_locks_and_downloads(client: TestClient, tmp_path: Path) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    bench = client.app.state.workbench
    pic = client.post("/v1/images", files={"file": ("p.png", _png(_picture()))}).json()
    url = f"/v1/images/{pic['id']}/segment"
    for body, status in (({}, 400), ({"points": [[10, 10, 2]]}, 400), ({"points": [[1, 2, 3, 4]]}, 422),
                         ({"box": [1, 2, 3]}, 422), ({"box": [1, 2, 3, 4], "color": "red"}, 422),
                         ({"box": [0, 0, 900, 900]}, 400), ({"box": [35, 25, 125, 95], "slice": 3}, 400),
                         ({"box": [35, 25, 125, 95], "propagate": True}, 400)):
        r = client.post(url, json=body)
        assert r.status_code == status and "error" in r.json(), (body, r.text)
    # concurrent prompts on one image, while the chat lock is held elsewhere: all answered, all the same
    results: list = []
    with bench.locks["chat"]:
        threads = [threading.Thread(target=lambda: results.append(client.post(url, json={"box": [35, 25, 125, 95]})))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert [r.status_code for r in results] == [200] * 4
    assert len({tuple(r.json()["rle"]["counts"]) for r in results}) == 1
    out = results[0].json()
    assert out["axes"] is not None and out["measurements"]["pixels"] > 0
    base = f"/v1/images/{pic['id']}/masks/{out['mask_id']}"
    png = np.asarray(Image.open(io.BytesIO(client.get(base + ".png").content))) > 0
    np.testing.assert_array_equal(png, rle_decode(out["rle"]))
    assert client.get(base + ".dcm").status_code == 400  # DICOM SEG only for DICOM uploads
    assert client.get(base + ".exe").status_code == 400
    assert client.get(f"/v1/images/{pic['id']}/masks/{'f' * 16}.png").status_code == 404

    vol = client.post("/v1/images", files={"file": ("v.nii.gz", _ct_volume(tmp_path))}).json()
    seg = client.post(f"/v1/images/{vol['id']}/segment", json={"box": [16, 16, 48, 48], "slice": 3,
                                                                "propagate": True}).json()
    assert seg["propagated"] and len(seg["slices"]) > 1
    nii = client.get(f"/v1/images/{vol['id']}/masks/{seg['mask_id']}.nii.gz")
    (tmp_path / "m.nii.gz").write_bytes(nii.content)
    back = np.transpose(np.asarray(nib.load(tmp_path / "m.nii.gz").dataobj), (2, 1, 0)) > 0
    expected = np.stack([rle_decode(seg["slices"][str(z)]) if str(z) in seg["slices"] else np.zeros((64, 64), bool)
                         for z in range(7)])
    np.testing.assert_array_equal(back, expected)

    ct = client.post("/v1/images", files={"file": ("ct", Path(get_testdata_file("CT_small.dcm")).read_bytes())})
    ct_id = ct.json()["id"]
    one = client.post(f"/v1/images/{ct_id}/segment", json={"box": [20, 20, 44, 44]}).json()
    dcm = client.get(f"/v1/images/{ct_id}/masks/{one['mask_id']}.dcm")
    assert dcm.status_code == 200, dcm.text
    ds = pydicom.dcmread(io.BytesIO(dcm.content))
    assert ds.Modality == "SEG" and "PatientName" not in dcm.headers.get("content-disposition", "")
