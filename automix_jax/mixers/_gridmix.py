"""Placeholder: being written."""


def gridmix(key, images, labels, **kwargs):
  raise NotImplementedError("gridmix is not implemented yet.")
