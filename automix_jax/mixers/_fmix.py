"""Placeholder: being written."""


def fmix(key, images, labels, **kwargs):
  raise NotImplementedError("fmix is not implemented yet.")
