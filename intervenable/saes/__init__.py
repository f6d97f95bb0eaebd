"""Sparse autoencoders and transcoders: load the field's files, splice them exactly, intervene on latents.

``load_sae`` (loading.py) reads SAELens folders and Gemma Scope ``params.npz``
into an ``SAE`` (sae.py); ``SAEIntervention`` (intervention.py) splices one at its
site with its error term; features.py sweeps and attributes over its latents.
"""
from .features import feature_attribution, feature_patching
from .hook_names import site_of_hook
from .intervention import SAEIntervention
from .loading import load_sae
from .sae import SAE

__all__ = ["SAE", "SAEIntervention", "feature_attribution", "feature_patching", "load_sae", "site_of_hook"]
