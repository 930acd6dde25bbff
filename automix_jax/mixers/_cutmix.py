"""Placeholder: being written."""


def cutmix(key, images, labels, **kwargs):
  raise NotImplementedError("cutmix is not implemented yet.")
