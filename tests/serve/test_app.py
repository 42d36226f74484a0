"""The web app: uploads, previews, prompts and errors through HTTP, checked against the predictors directly."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from medfoundry.serve.app import create_app
from medfoundry.serve.workbench import Workbench


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    demo = tmp_path_factory.mktemp("demo")
    (demo / "index.html").write_text("<html>demo page</html>")
    bench = Workbench(store=store, max_upload_bytes=2 << 20, max_images=4)
    with TestClient(create_app(bench, demo_dir=demo)) as c:
        yield c
    bench.close()


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _polyp() -> np.ndarray:
    arr = np.random.default_rng(0).integers(0, 60, (160, 200, 3), dtype=np.uint8)
    arr[40:120, 50:150] = (230, 120, 110)
    return arr


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_page_health_models_and_demo(client: TestClient) -> None:
    assert "medfoundry viewer" in client.get("/").text
    assert client.get("/v1/health").json()["status"] == "ok"
    names = {m["name"] for m in client.get("/v1/models").json()}
    assert {"medfoundry-sam-lite", "medfoundry-clip-tiny"} <= names
    assert "demo page" in client.get("/demo/").text
    assert client.get("/api/health").json()["status"] == "ok"  # the old prefix stays as an alias
    schema = client.get("/openapi.json").json()
    assert "/v1/images/{image_id}/segment" in schema["paths"] and not any(p.startswith("/api") for p in schema["paths"])


def test_upload_preview_and_segment_match_the_predictor(client: TestClient) -> None:
    from medfoundry.io import MedImage
    from medfoundry.predict.segment import open_segmenter

    arr = _polyp()
    r = client.post("/v1/images", files={"file": ("../../etc/polyp.png", _png_bytes(arr), "image/png")})
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["slices"] == 1 and info["filename"] == "polyp.png" and "source" not in info["summary"]
    store = client.app.state.workbench.store
    assert [p.name for p in store.iterdir()] == [f"{info['id']}.png"]  # stored by hash, never by its name
    preview = np.asarray(Image.open(io.BytesIO(client.get(f"/v1/images/{info['id']}/preview.png").content)))
    assert preview.shape == (160, 200, 3)
    box = [45.0, 35.0, 155.0, 125.0]
    out = client.post(f"/v1/images/{info['id']}/segment", json={"box": box}).json()
    mask = _decode(out["mask_png"]) > 0
    seg = open_segmenter("medfoundry-sam-lite")
    seg.set_image(MedImage(array=arr, spacing=(1.0, 1.0), photometric="RGB"))
    direct = seg.predict(boxes=np.array([box], dtype=np.float32)).best()[0]
    np.testing.assert_array_equal(mask, direct)
    assert out["measurements"]["pixels"] == int(direct.sum())
    from medfoundry.serve.masks import rle_decode

    np.testing.assert_array_equal(rle_decode(out["rle"]), direct)
    png = client.get(f"/v1/images/{info['id']}/masks/{out['mask_id']}.png")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.content))) > 0, direct)
    lean = client.post(f"/v1/images/{info['id']}/segment", json={"box": box, "png": False}).json()  # the viewer's
    assert lean["mask_png"] is None
    np.testing.assert_array_equal(rle_decode(lean["rle"]), direct)


def test_classify_and_ground(client: TestClient) -> None:
    info = client.post("/v1/images", files={"file": ("x.png", _png_bytes(_polyp()), "image/png")}).json()
    probs = client.post(f"/v1/images/{info['id']}/classify", json={"labels": ["normal", " pneumonia ", ""]}).json()
    assert set(probs["probs"]) == {"normal", "pneumonia"} and sum(probs["probs"].values()) == pytest.approx(1, abs=1e-4)
    heat = client.post(f"/v1/images/{info['id']}/ground", json={"text": "a colon polyp"}).json()
    assert _decode(heat["overlay_png"]).shape == (160, 200, 3)


def test_volume_slices_and_3d_propagation(client: TestClient, tmp_path: Path) -> None:
    zz, yy, xx = np.mgrid[0:9, 0:96, 0:96]
    ball = (zz - 4) ** 2 * 16 + (yy - 48) ** 2 + (xx - 48) ** 2 <= 20**2
    ct = np.where(ball, 60.0, -100.0).astype(np.float32)
    nib.save(nib.Nifti1Image(np.transpose(ct, (2, 1, 0)), np.diag([1.0, 1.0, 4.0, 1.0])), tmp_path / "ct.nii.gz")
    info = client.post("/v1/images", files={"file": ("ct.nii.gz", (tmp_path / "ct.nii.gz").read_bytes())}).json()
    assert info["slices"] == 9
    assert client.get(f"/v1/images/{info['id']}/preview.png", params={"slice": 8}).status_code == 200
    r = client.get(f"/v1/images/{info['id']}/preview.png", params={"slice": 9})
    assert r.status_code == 400 and "outside" in r.json()["detail"]
    out = client.post(f"/v1/images/{info['id']}/segment",
                      json={"box": [27.0, 27.0, 70.0, 70.0], "slice": 4, "propagate": True}).json()
    assert out["measurements"]["volume_ml"] > 0 and out["measurements"]["pixels"] > 3000  # several slices


def test_bad_input_gets_typed_errors(client: TestClient, tmp_path: Path) -> None:
    too_big = client.post("/v1/images", files={"file": ("big.npy", b"\0" * (3 << 20))})
    assert too_big.status_code == 413 and too_big.json()["error"] == "UploadTooLargeError"
    corrupt = client.post("/v1/images", files={"file": ("scan.dcm", b"DICM" + b"\x01" * 300)})
    assert corrupt.status_code == 400 and corrupt.json()["error"] == "ImageReadError"
    assert str(client.app.state.workbench.store) not in corrupt.json()["detail"]  # no server paths leak
    empty = client.post("/v1/images", files={"file": ("e.png", b"")})
    assert empty.status_code == 400
    buf = io.BytesIO()
    np.savez(buf, imgs=np.array([{"a": 1}], dtype=object))  # a pickle inside an npz is never loaded
    pickled = client.post("/v1/images", files={"file": ("evil.npz", buf.getvalue())})
    assert pickled.status_code == 400
    store = client.app.state.workbench.store
    assert not [p for p in store.iterdir() if p.suffix in (".dcm", ".npz", ".part")]  # refused files are removed
    assert client.get("/v1/images/../../etc/passwd/preview.png").status_code == 404
    assert client.get(f"/v1/images/{'0' * 24}/preview.png").json()["error"] == "UnknownImageError"
    info = client.post("/v1/images", files={"file": ("x.png", _png_bytes(_polyp()), "image/png")}).json()
    outside = client.post(f"/v1/images/{info['id']}/segment", json={"box": [0, 0, 500, 500]})
    assert outside.status_code == 400 and outside.json()["error"] == "InputContractError"
    assert client.post(f"/v1/images/{info['id']}/segment", json={"box": [1, 2, 3]}).status_code == 422
    assert client.post(f"/v1/images/{info['id']}/classify", json={"labels": ["only one"]}).status_code == 400
    assert client.post(f"/v1/images/{info['id']}/segment", json={"box": [10, 10, 50, 50],
                                                                  "propagate": True}).status_code == 400


def test_similar_cases_among_uploads_and_from_an_index(client: TestClient, tmp_path: Path) -> None:
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.tasks.retrieval import build_index

    polyp = client.post("/v1/images", files={"file": ("p.png", _png_bytes(_polyp()), "image/png")}).json()
    dark = np.zeros((160, 200, 3), np.uint8)
    dark[60:100, 80:120] = 90
    other = client.post("/v1/images", files={"file": ("<b>dark</b>.png", _png_bytes(dark))}).json()
    found = client.get(f"/v1/images/{polyp['id']}/similar", params={"k": 10}).json()
    assert found["source"] == "uploads" and polyp["id"] not in [c["id"] for c in found["cases"]]
    assert other["id"] in [c["id"] for c in found["cases"]]
    scores = [c["score"] for c in found["cases"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-5 for s in scores)
    assert client.get(f"/v1/images/{polyp['id']}/similar", params={"k": 0}).status_code == 400

    (tmp_path / "archive").mkdir()
    Image.fromarray(_polyp()).save(tmp_path / "archive" / "same_polyp.png")
    Image.fromarray(dark).save(tmp_path / "archive" / "dark.png")
    build_index(open_contrastive("medfoundry-clip-tiny"), tmp_path / "archive", tmp_path / "index.npz", progress=False)
    bench = Workbench(store=tmp_path / "store", index=tmp_path / "index.npz")
    with TestClient(create_app(bench)) as indexed:
        up = indexed.post("/v1/images", files={"file": ("q.png", _png_bytes(_polyp()))}).json()
        cases = indexed.get(f"/v1/images/{up['id']}/similar", params={"k": 2}).json()
        no_bank = indexed.get(f"/v1/images/{up['id']}/report")
    assert no_bank.status_code == 400 and "report bank" in no_bank.json()["detail"]
    assert cases["source"] == "index" and cases["cases"][0]["name"] == "same_polyp.png"
    assert cases["cases"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    from medfoundry.errors import InputContractError

    with pytest.raises(InputContractError, match="built with"):
        Workbench(store=tmp_path / "s2", index=tmp_path / "index.npz", contrastive_model="biomedclip")


def test_report_from_the_texts_of_the_index(tmp_path: Path) -> None:
    from medfoundry.io import MedImage
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.tasks.report import generate_report
    from medfoundry.tasks.retrieval import build_index

    notes = ["A pedunculated polyp in the sigmoid colon.", "Normal colonic mucosa.", "A small sessile polyp."]
    clip = open_contrastive("medfoundry-clip-tiny")
    build_index(clip, None, tmp_path / "bank.npz", texts=notes, progress=False)
    bench = Workbench(store=tmp_path / "store", index=tmp_path / "bank.npz")
    with TestClient(create_app(bench)) as app:
        up = app.post("/v1/images", files={"file": ("q.png", _png_bytes(_polyp()))}).json()
        got = app.get(f"/v1/images/{up['id']}/report", params={"k": 2}).json()
        assert app.get(f"/v1/images/{up['id']}/report", params={"k": 0}).status_code == 400
    expected = generate_report(clip, MedImage(array=_polyp(), spacing=(1.0, 1.0), photometric="RGB"),
                               bench.index, k=2).as_dict()
    assert got["report"] == expected["report"] and [s["text"] for s in got["sources"]] == [
        s["text"] for s in expected["sources"]] and all(s["text"] in notes for s in got["sources"])


def test_oldest_uploads_are_evicted_with_their_files(tmp_path: Path) -> None:
    bench = Workbench(store=tmp_path / "store", max_images=2)
    with TestClient(create_app(bench)) as c:
        ids = []
        for i in range(3):
            arr = np.full((32, 32), 40 * (i + 1), np.uint8)
            ids.append(c.post("/v1/images", files={"file": (f"{i}.png", _png_bytes(arr))}).json()["id"])
        assert c.get(f"/v1/images/{ids[0]}/preview.png").status_code == 404
        assert all(c.get(f"/v1/images/{i}/preview.png").status_code == 200 for i in ids[1:])
    assert sorted(p.stem for p in (tmp_path / "store").iterdir()) == sorted(ids[1:])
    bench.close()
    assert (tmp_path / "store").is_dir()  # a store the caller gave is theirs: close() leaves it


def test_ask_a_conversational_model(tiny_llava, tmp_path: Path) -> None:
    from medfoundry.io import MedImage
    from medfoundry.predict.conversational import load_chat
    from medfoundry.registry.loading import write_checkpoint_record
    from tiny_llava import record

    folder = Path(tiny_llava[2])
    write_checkpoint_record(record(), tmp_path / "chat")  # a record folder pointing at the tiny Llava's weights
    bench = Workbench(store=tmp_path / "store", chat_model=f"local-dir:{tmp_path / 'chat'}",
                      chat_weights=f"local-dir:{folder}")
    with TestClient(create_app(bench)) as app:
        up = app.post("/v1/images", files={"file": ("q.png", _png_bytes(_polyp()))}).json()
        got = app.post(f"/v1/images/{up['id']}/ask", json={"question": "is there a lesion ?",
                                                            "max_new_tokens": 5}).json()
        assert app.post(f"/v1/images/{up['id']}/ask", json={"question": " "}).status_code == 400
        assert app.post(f"/v1/images/{up['id']}/ask", json={"question": "x", "max_new_tokens": 0}).status_code == 400
    expected = load_chat(record(), folder).ask(MedImage(array=_polyp(), spacing=(1.0, 1.0), photometric="RGB"),
                                               "is there a lesion ?", max_new_tokens=5)
    assert got["answer"] == expected.text and got["model"] == "tiny-llava"
    bench.close()
    without = Workbench(store=tmp_path / "store2")
    with TestClient(create_app(without)) as app:
        up = app.post("/v1/images", files={"file": ("q.png", _png_bytes(_polyp()))}).json()
        response = app.post(f"/v1/images/{up['id']}/ask", json={"question": "is there a lesion ?"})
        assert response.status_code == 400 and "--chat-model" in response.json()["detail"]
    without.close()
