"""Placeholder: being written."""


def saliencymix(key, images, labels, **kwargs):
  raise NotImplementedError("saliencymix is not implemented yet.")
