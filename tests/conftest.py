import gzip
import os
import shutil

import pytest
import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

# A copy of ../shared/reference (the public SwAV/DINO checkpoint layouts and the standard ImageNet 1%/10% lists,
# gzipped), so that no test skips in a clean clone.
REFERENCE_FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "reference")


@pytest.fixture(scope="session")
def shared_reference(tmp_path_factory) -> str:
    """A folder laid out as ../shared/reference, made from tests/fixtures/reference (the .gz files unpacked)."""
    out = tmp_path_factory.mktemp("reference")
    for folder, _, files in os.walk(REFERENCE_FIXTURES):
        target = out / os.path.relpath(folder, REFERENCE_FIXTURES)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            source = os.path.join(folder, name)
            if name.endswith(".gz"):
                with gzip.open(source, "rb") as src, open(target / name[:-3], "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copy(source, target / name)
    return str(out)
