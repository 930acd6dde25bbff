"""A cifar10-jpeg.tar.gz look-alike for tests (same layout as the real archive).

``train/<class>/NNNN.jpg`` and ``test/<class>/NNNN.jpg`` with a
class-dependent mean colour, so that the task is learnable at all.
"""

import io
import tarfile

import numpy as np
from PIL import Image

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
           "horse", "ship", "truck")


def write_tiny_archive(path, *, train_per_class=2, test_per_class=2, size=8,
                       seed=0):
  """Writes the archive to ``path`` (a .tar.gz) and returns ``str(path)``."""
  rng = np.random.default_rng(seed)
  with tarfile.open(path, "w:gz") as tar:
    for split, n in (("test", test_per_class), ("train", train_per_class)):
      for c, name in enumerate(CLASSES):
        for i in range(n):
          img = np.clip(rng.normal(25 * c, 30, (size, size, 3)), 0, 255)
          buf = io.BytesIO()
          Image.fromarray(img.astype(np.uint8)).save(buf, format="JPEG")
          info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
          info.size = buf.tell()
          buf.seek(0)
          tar.addfile(info, buf)
  return str(path)
