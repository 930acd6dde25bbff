"""Placeholder: being written."""


def maskmix(key, images, labels, **kwargs):
  raise NotImplementedError("maskmix is not implemented yet.")
