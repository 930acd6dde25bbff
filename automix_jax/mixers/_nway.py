"""Placeholder: being written."""


def nway_mixup(key, images, labels, **kwargs):
  raise NotImplementedError("nway_mixup is not implemented yet.")
