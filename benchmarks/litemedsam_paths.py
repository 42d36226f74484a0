"""Every faster path of LiteMedSAM on its real weights: mask IoU against the float32 reference path.

Images: the endoscopy, CT, MR and radiograph cases of tests/models/test_litemedsam_reference.py plus Kvasir-SEG
images with their true boxes. For each path, the box-prompted mask at the original size is compared with
the float32 path's (``open_segmenter("litemedsam", precision="fp32")``):

- ``bf16``: image encoder in bfloat16 (``--precision bf16``);
- ``fast-prompts``: mask decoder fused and in bfloat16 where native (``--fast-prompts``);
- ``bf16+fast-prompts``: both;
- ``tta-embedding``: mirrored encoding averaged in (``--tta embedding``: a different prediction by design);
- ``onnx``: encoder and decoder exported by ``models export-onnx`` and run in onnxruntime (``--onnx``);
- ``embed-pool``: refused for LiteMedSAM (its TinyViT embedding is not poolable): recorded as not applicable.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/litemedsam_paths.py --kvasir 12
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medfoundry.errors import InputContractError
from medfoundry.eval.provenance import collect
from medfoundry.io import read_image
from medfoundry.predict.segment import open_segmenter
from medfoundry.samples import shared_data_dir

OUT = Path(__file__).parent / "results" / "litemedsam_paths.json"


def _mask_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def cases(root: Path, kvasir: int, files: list[Path] | None = None) -> list[tuple[str, object, list[float]]]:
    """(name, image, XYXY box) of every case; the files read are appended to ``files``."""
    import pydicom.data

    out = []
    files = [] if files is None else files
    boxes = json.loads((root / "kvasir_seg" / "bboxes.json").read_text())
    files.append(root / "kvasir_seg" / "bboxes.json")
    for name in [n for n, v in boxes.items() if len(v["bbox"]) == 1][:kvasir]:
        b = boxes[name]["bbox"][0]
        files.append(root / "kvasir_seg" / "images" / f"{name}.jpg")
        out.append((f"kvasir/{name}", read_image(files[-1]), [b["xmin"], b["ymin"], b["xmax"], b["ymax"]]))
    ts = root / "totalsegmentator_examples"
    files += [ts / "dicom" / "example_ct_dicom", ts / "nifti" / "example_seg_dicom.nii.gz"]
    ct = read_image(files[-2])
    labels = read_image(files[-1]).array
    k = int(np.argmax((labels > 0).sum(axis=(1, 2))))
    for lab in [v for v in np.unique(labels[k]) if v][:4]:  # up to four organs on the fullest slice
        if (labels[k] == lab).sum() >= 200:
            out.append((f"ct/slice{k}/label{int(lab)}", ct.slice(k), _mask_box(labels[k] == lab)))
    files.append(Path(pydicom.data.get_testdata_file("MR_small.dcm")))
    out.append(("mr/MR_small", read_image(files[-1]), [16, 16, 48, 48]))
    files.append(next((root / "siim_cxr_dicom_sample").glob("*.dcm")))
    cr = read_image(files[-1])
    h, w = cr.spatial_shape
    out.append(("radiograph/siim", cr, [0.1 * w, 0.2 * h, 0.5 * w, 0.8 * h]))
    return out


def _masks(seg, data) -> tuple[list[np.ndarray], float]:
    masks, start = [], time.process_time()
    for _, image, box in data:
        seg.set_image(image)
        masks.append(seg.predict(boxes=np.array([box], np.float32)).best()[0])
    return masks, (time.process_time() - start) / len(data)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kvasir", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = shared_data_dir()
    if root is None:
        raise SystemExit("needs ../shared/data")
    files: list[Path] = []
    data = cases(root, args.kvasir, files)
    reference = open_segmenter("litemedsam", precision="fp32")
    ref, ref_s = _masks(reference, data)
    # one entry per weights file: LiteMedSAM's checkpoint (every torch path) and the ONNX export
    provenance = {"litemedsam": collect(reference, data=files, settings=args)}
    from medfoundry.models.sam_fast import native_bf16

    def fast(seg):
        return seg.set_decoder_precision("bf16" if native_bf16() else "fp32")

    tmp = tempfile.mkdtemp()
    paths = {
        "bf16": lambda: open_segmenter("litemedsam", precision="bf16"),
        "fast-prompts": lambda: fast(open_segmenter("litemedsam", precision="fp32")),
        "bf16+fast-prompts": lambda: fast(open_segmenter("litemedsam", precision="bf16")),
        "tta-embedding": lambda: open_segmenter("litemedsam", precision="fp32", tta="embedding"),
        "onnx": lambda: _onnx(tmp),
        "embed-pool": lambda: open_segmenter("litemedsam", precision="fp32", embed_pool=2),
    }
    results = {"fp32": {"cpu_s_per_image": ref_s}}
    for name, build in paths.items():
        try:
            seg = build()
        except InputContractError as exc:
            results[name] = {"applicable": False, "error": str(exc)}
            print(name, "not applicable:", exc, flush=True)
            continue
        if name == "onnx":
            provenance["litemedsam-onnx"] = collect(seg, data=files, settings=args)
        masks, secs = _masks(seg, data)
        ious = [_iou(a, b) for a, b in zip(ref, masks, strict=True)]
        results[name] = {"iou_mean": statistics.mean(ious), "iou_min": min(ious),
                         "worst_case": data[int(np.argmin(ious))][0], "cpu_s_per_image": secs,
                         "meets_0.98": min(ious) >= 0.98, "per_case": dict(zip([d[0] for d in data], ious,
                                                                                   strict=True))}
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "per_case"}), flush=True)
    out = {"benchmark": "litemedsam_paths", "reference": "fp32 (open_segmenter precision='fp32')",
           "cases": [d[0] for d in data], "threads": args.threads, "torch": torch.__version__,
           "native_bf16": native_bf16(),
           "command": f"OMP_NUM_THREADS={args.threads} nice -n 10 python benchmarks/litemedsam_paths.py "
                      f"--kvasir {args.kvasir}", "paths": results, "provenance": provenance}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


def _onnx(folder: str):
    from medfoundry.export.onnx import export_sam_onnx

    export_sam_onnx(open_segmenter("litemedsam", precision="fp32").model, folder)
    return open_segmenter("litemedsam", onnx=folder)


if __name__ == "__main__":
    main()
