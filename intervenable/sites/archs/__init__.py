"""Model families. Adding one: a new file here and one line below."""
from . import gpt2  # noqa: F401
