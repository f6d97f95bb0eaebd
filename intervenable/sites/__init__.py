"""WHERE to intervene: sites, module paths, and the architecture registry."""
from .registry import (Architecture, Component, LayerStack, find_architecture, register_architecture,
                       registered_architectures)
from .resolve import ABSTRACT_COMPONENTS, list_components, resolve_component
from .site import Site
