"""Placeholder: being written."""


def resizemix(key, images, labels, **kwargs):
  raise NotImplementedError("resizemix is not implemented yet.")
