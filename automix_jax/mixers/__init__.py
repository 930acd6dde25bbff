"""Static mixers as pure, key-first JAX transforms.

Every mixer has the signature::

    mixed_images, mixed_labels, aux = mixer(key, images, labels, *, ...)

with ``images`` ``[B, H, W, C]`` float, ``labels`` ``[B, K]`` dense targets and
``aux`` holding at least ``lam`` (``[B]``, own-label weight) and ``index`` (``[B]``,
partner). See ``automix_jax/mixers/_common.py`` for the full contract (layouts,
``data_format``, value checks under jit). ``Mixup`` is timm's ``Mixup`` as one
pure call ``(key, images, int_labels) -> (images, soft_targets)``. This package
imports only jax and numpy.

Model-aware mixers (docs/interfaces.md, "Model-aware mixers") are registered
with what they need from the model, ``needs(name)``: ``"saliency"``,
``"cam"`` and ``"token_attention"`` arrive as keyword-only arrays per call
(``snapmix(key, images, labels, cam=...)``, ``tokenmix(...,
token_attention=...)``); ``"feature_mix"`` mixers (``manifoldmix``,
``alignmix``) return ``(feature_mix, mixed_labels, aux)`` for the model to
call on its hidden features (``model.apply(..., feature_mix=fn)``); and
``"relabel"`` mixers (``transmix``, ``mixpro``, ``tlalign``) return
``(mixed_images, relabel, aux)``, ``relabel(out) -> (mixed_labels, aux)``
reading the outputs ``relabel_outputs(name)`` of the forward pass on the
mixed images. The trainer (``train/static.py``) computes all of these in the
same jitted step.
"""

from automix_jax.mixers import _alignmix
from automix_jax.mixers import _attentive
from automix_jax.mixers import _comixup
from automix_jax.mixers import _cutmix
from automix_jax.mixers import _fmix
from automix_jax.mixers import _gridmix
from automix_jax.mixers import _guidedmix
from automix_jax.mixers import _manifoldmix
from automix_jax.mixers import _maskmix
from automix_jax.mixers import _mixpro
from automix_jax.mixers import _nway
from automix_jax.mixers import _puzzlemix
from automix_jax.mixers import _resizemix
from automix_jax.mixers import _smmix
from automix_jax.mixers import _smoothmix
from automix_jax.mixers import _snapmix
from automix_jax.mixers import _tlalign
from automix_jax.mixers import _tokenmix
from automix_jax.mixers import _transmix
from automix_jax.mixers._alignmix import alignmix
from automix_jax.mixers._alignmix import sinkhorn_plan
from automix_jax.mixers._attentive import attentive_grid_mix
from automix_jax.mixers._common import LAM_SCOPES
from automix_jax.mixers._common import PARTNERS
from automix_jax.mixers._common import apply_mask
from automix_jax.mixers._common import check_class_ids
from automix_jax.mixers._common import draw_lam
from automix_jax.mixers._common import draw_partner
from automix_jax.mixers._common import mix_labels
from automix_jax.mixers._common import one_hot
from automix_jax.mixers._comixup import comixup
from automix_jax.mixers._compose import get
from automix_jax.mixers._compose import hyperparameter_names
from automix_jax.mixers._compose import NEEDS
from automix_jax.mixers._compose import names
from automix_jax.mixers._compose import needs
from automix_jax.mixers._compose import no_mix
from automix_jax.mixers._compose import per_device
from automix_jax.mixers._compose import register
from automix_jax.mixers._compose import relabel_outputs
from automix_jax.mixers._compose import saliency_fn
from automix_jax.mixers._compose import switch
from automix_jax.mixers._cutmix import cutmix
from automix_jax.mixers._fmix import fmix
from automix_jax.mixers._gridmix import gridmix
from automix_jax.mixers._guidedmix import guided_saliency
from automix_jax.mixers._guidedmix import guidedmixup
from automix_jax.mixers._manifoldmix import manifoldmix
from automix_jax.mixers._maskmix import maskmix
from automix_jax.mixers._mixpro import mixpro
from automix_jax.mixers._mixup import mixup
from automix_jax.mixers._nway import nway_mixup
from automix_jax.mixers._puzzlemix import gradient_saliency
from automix_jax.mixers._puzzlemix import puzzlemix
from automix_jax.mixers._resizemix import resizemix
from automix_jax.mixers._saliencymix import saliencymix
from automix_jax.mixers._smmix import smmix
from automix_jax.mixers._smoothmix import smoothmix
from automix_jax.mixers._snapmix import snapmix
from automix_jax.mixers._timm import Mixup
from automix_jax.mixers._tlalign import tlalign
from automix_jax.mixers._tokenmix import tokenmix
from automix_jax.mixers._transmix import transmix

register("mixup")(mixup)
register("cutmix", checks=_cutmix.CHECKS)(cutmix)
register("fmix", checks=_fmix.CHECKS)(fmix)
register("resizemix", checks=_resizemix.CHECKS)(resizemix)
register("saliencymix")(saliencymix)
register("gridmix", checks=_gridmix.CHECKS)(gridmix)
register("smoothmix", checks=_smoothmix.CHECKS)(smoothmix)
register("attentivemix", checks=_attentive.CHECKS)(attentive_grid_mix)
register("maskmix", checks=_maskmix.CHECKS)(maskmix)
register("nway_mixup", checks=_nway.CHECKS)(nway_mixup)
# Model-aware mixers (docs/interfaces.md, "Model-aware mixers").
register("manifoldmix", checks=_manifoldmix.CHECKS,
         needs=("feature_mix",))(manifoldmix)
register("alignmix", checks=_alignmix.CHECKS, needs=("feature_mix",))(alignmix)
register("snapmix", checks=_snapmix.CHECKS, needs=("cam",))(snapmix)
# Vision-transformer mixers: attention from a clean pass as a model input
# ("token_attention"), or labels recomputed from the mixed pass ("relabel").
register("tokenmix", checks=_tokenmix.CHECKS,
         needs=("token_attention",))(tokenmix)
register("smmix", checks=_smmix.CHECKS, needs=("token_attention",))(smmix)
register("transmix", checks=_transmix.CHECKS, needs=("relabel",),
         relabel_outputs=_transmix.RELABEL_OUTPUTS)(transmix)
register("mixpro", checks=_mixpro.CHECKS, needs=("relabel",),
         relabel_outputs=_mixpro.RELABEL_OUTPUTS)(mixpro)
register("tlalign", checks=_tlalign.CHECKS, needs=("relabel",),
         relabel_outputs=_tlalign.RELABEL_OUTPUTS)(tlalign)
register("guidedmixup", checks=_guidedmix.CHECKS, needs=("saliency",),
         saliency_fn=guided_saliency)(guidedmixup)
register("puzzlemix", checks=_puzzlemix.CHECKS, needs=("saliency",),
         saliency_fn=gradient_saliency)(puzzlemix)
register("comixup", checks=_comixup.CHECKS, needs=("saliency",),
         saliency_fn=gradient_saliency)(comixup)
