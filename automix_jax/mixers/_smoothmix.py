"""Placeholder: being written."""


def smoothmix(key, images, labels, **kwargs):
  raise NotImplementedError("smoothmix is not implemented yet.")
