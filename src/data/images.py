"""Image decoding: every image becomes 3-channel RGB; a file that cannot be decoded names itself."""
from __future__ import annotations

from PIL import Image

from .errors import ImageLoadError


def load_rgb(path: str) -> Image.Image:
    """Open ``path`` fully (so a truncated file fails here, not inside a transform) and convert it to RGB.

    Grey images (for example 28-px Fashion-MNIST) get their one channel copied to three, as
    torchvision's ``pil_loader`` does. An RGB image is returned as decoded (``convert`` would only copy it).
    """
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB")
    except FileNotFoundError as err:
        raise ImageLoadError(f"image file {path} does not exist (was it moved or deleted after the dataset was "
                             "scanned?); restore it or remove it from the dataset and its list files") from err
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise ImageLoadError(f"cannot decode image {path} ({type(err).__name__}: {err}); the file is corrupt or "
                             "truncated: replace it with a valid copy or delete it, then restart") from err
