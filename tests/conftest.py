import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from fixtures import make_training_tree, zip_tree  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL_ZIP = REPO.parent / "shared" / "gtsrb" / "GTSRB_Final_Training_Images.zip"


@pytest.fixture(scope="session")
def synthetic_zip(tmp_path_factory) -> Path:
    """The synthetic training archive (43 classes x 10 tracks x 3 frames) as a zip."""
    root = tmp_path_factory.mktemp("synthetic")
    tree = make_training_tree(root / "tree")
    return zip_tree(tree, root / "GTSRB_Final_Training_Images.zip")


@pytest.fixture(scope="session")
def synthetic_pack(synthetic_zip, tmp_path_factory) -> Path:
    """The synthetic archive packed at 28x28 with the default track split."""
    from gtsrb.data import pack

    out = tmp_path_factory.mktemp("pack") / "small.h5"
    pack([synthetic_zip], out)
    return out


@pytest.fixture(scope="session")
def framed_pack(synthetic_zip, tmp_path_factory) -> Path:
    """The synthetic archive packed as the recipe trains on it: ROI crops plus each whole frame (32 px)
    with its ROI box (``gtsrb pack --roi --frame-size 32``)."""
    from gtsrb.data import pack

    out = tmp_path_factory.mktemp("framed") / "framed.h5"
    pack([synthetic_zip], out, roi=True, frame_size=32)
    return out


@pytest.fixture(scope="session")
def real_zip() -> Path:
    if not REAL_ZIP.is_file():
        pytest.skip(f"{REAL_ZIP} not present")
    return REAL_ZIP
