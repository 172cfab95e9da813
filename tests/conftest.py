import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

SHARED_REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference")


@pytest.fixture(scope="session")
def shared_reference() -> str:
    """Path of ../shared/reference (read-only reference data the tests may use)."""
    path = os.path.abspath(SHARED_REFERENCE)
    if not os.path.isdir(path):
        pytest.skip(f"reference data not found at {path} (expected ../shared/reference beside the repository)")
    return path
