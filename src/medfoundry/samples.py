"""Real sample images that need no download: the test files shipped inside pydicom and nibabel, and the
project's shared data folder when it is present (``$MEDFOUNDRY_SHARED_DATA``, else ``../shared/data`` from
the working directory or from the source checkout)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """A named sample image: where it is, what it shows, and where it comes from."""

    name: str
    path: Path
    description: str
    origin: str


def shared_data_dir() -> Path | None:
    """The shared data folder if one is present on this machine, else None."""
    candidates = []
    if os.environ.get("MEDFOUNDRY_SHARED_DATA"):
        candidates.append(Path(os.environ["MEDFOUNDRY_SHARED_DATA"]))
    candidates.append(Path.cwd().parent / "shared" / "data")
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "data")
    return next((c for c in candidates if (c / "INDEX.md").is_file()), None)


def package_samples() -> list[Sample]:
    """Samples shipped inside installed packages (always available once medfoundry is installed)."""
    from pydicom.data import get_testdata_file

    out = [
        Sample("ct-small", Path(get_testdata_file("CT_small.dcm")), "CT slice, 128×128, HU",
               "pydicom test data (CT_small.dcm)"),
        Sample("mr-small", Path(get_testdata_file("MR_small.dcm")), "MR slice, 64×64",
               "pydicom test data (MR_small.dcm)"),
    ]
    try:
        import nibabel

        anat = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
        if anat.is_file():
            out.append(Sample("mr-anatomical", anat, "MR head volume (NIfTI)", "nibabel test data (anatomical.nii)"))
    except ImportError:  # pragma: no cover - nibabel is a core dependency
        pass
    return out


def shared_samples() -> list[Sample]:
    """Samples from the shared data folder, when it is present."""
    root = shared_data_dir()
    if root is None:
        return []
    wanted = [
        ("cxr-dicom", "siim_cxr_dicom_sample", "*.dcm", "chest radiograph, DICOM CR (JPEG baseline)"),
        ("ct-series", "totalsegmentator_examples/dicom/example_ct_dicom", None, "CT series, 20 slices (JPEG 2000)"),
        ("ct-nifti", "totalsegmentator_examples/nifti/example_ct_sm.nii.gz", None, "CT volume, NIfTI, HU"),
        ("polyp", "kvasir_seg/images", "*.jpg", "colonoscopy frame with a polyp (Kvasir-SEG)"),
        ("ct-lesion", "deeplesion_ct_lesion_3d/volumes", "*.npz", "CT lesion sub-volume (DeepLesion)"),
    ]
    out = []
    for name, rel, pattern, description in wanted:
        path = root / rel
        if pattern is not None:
            matches = sorted(path.glob(pattern)) if path.is_dir() else []
            if not matches:
                continue
            path = matches[0]
        if path.exists():
            out.append(Sample(name, path, description, f"shared data ({rel})"))
    return out


def all_samples() -> list[Sample]:
    """Package samples first, then shared-data samples when present."""
    return package_samples() + shared_samples()
