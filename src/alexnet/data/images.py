"""Opening one image file for inference, with the checks a file from a user needs.

``predict``, ``neighbors --image`` and ``activations`` read files that anyone may hand them:
an empty or truncated file, something that is not an image, or a small file that claims a
huge image (a decompression bomb) must each be one clear error, not a traceback or minutes
of decoding.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import AlexNetError

# PIL's own bomb check warns at 89 MP and refuses at 179 MP; refuse at the warning so a
# huge file is an error, not minutes of decoding.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def open_image(path: str) -> Image.Image:
    """The decoded image at ``path``; an AlexNetError naming the file where it cannot be one."""
    file = Path(path)
    if not file.is_file():
        raise AlexNetError(f"{path}: no such file")
    if file.stat().st_size == 0:
        raise AlexNetError(f"{path}: the file is empty")
    try:
        with warnings.catch_warnings():
            # PIL warns about damaged metadata (EXIF, truncated TIFF tags) on files it still
            # decodes; the answer is the prediction, not a warning on stderr.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(file)
            if img.width * img.height > MAX_PIXELS:
                raise AlexNetError(f"{path}: {img.width}x{img.height} is too large to classify (over {MAX_PIXELS:,} pixels)")
            img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        if isinstance(e, UnidentifiedImageError):
            raise AlexNetError(f"{path}: not an image file this program can read") from None
        raise AlexNetError(f"{path}: the image is too large to classify") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise AlexNetError(f"{path}: cannot decode the image ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    return img
