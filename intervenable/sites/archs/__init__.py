"""Model families. Adding one: a new file here and one line below."""
from . import gpt2  # noqa: F401
from . import llama  # noqa: F401  (LLaMA, Mistral, Qwen2, Qwen3, Gemma, Gemma2, OLMo, OLMo2)
from . import mixtral  # noqa: F401
from . import gpt_oss  # noqa: F401
from . import phi  # noqa: F401  (Phi, Phi-3)
from . import gpt_neo  # noqa: F401  (GPT-NeoX, GPT-Neo, GPT-J)
from . import opt  # noqa: F401
from . import falcon  # noqa: F401
from . import bert  # noqa: F401  (BERT, RoBERTa, ESM)
from . import blip  # noqa: F401
from . import llava  # noqa: F401
from . import whisper  # noqa: F401
from . import wav2vec2_bert  # noqa: F401
from . import mamba  # noqa: F401
from . import builtin  # noqa: F401  (intervenable.models: MLP, GRU)
