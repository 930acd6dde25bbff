"""Placeholder: being written."""


def attentive_grid_mix(key, images, labels, **kwargs):
  raise NotImplementedError("attentive_grid_mix is not implemented yet.")
