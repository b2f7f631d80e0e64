"""Token-level explanations of the scalars ihs computes: why a prompt looks malicious, not only where.

- :mod:`ihs.explain.attribution`: integrated gradients and gradient x input on the input embeddings for
  a probe logit, the refusal margin or a logit-lens token logit (targets in :mod:`ihs.explain.targets`);
- :mod:`ihs.explain.attention`: the last token's attention per layer and head, summarised on a marked span;
- :mod:`ihs.explain.concepts`: concept directions (harm, emotion), TCAV sensitivity of the refusal margin
  and per-layer cosines with the probe and refusal directions, against random and shuffled controls;
- :mod:`ihs.explain.faithfulness`: deletion/insertion curves against random and bag-of-words orders, and
  the randomised-weights sanity check;
- :func:`token_heatmap_html`: escaped token spans coloured by score.

Every workflow takes keyword-only options (a frozen dataclass) and returns a result with ``to_dict``
(JSON-ready) and ``save``. Computing code here never imports plotting.
"""

from ihs.explain.attention import AttentionOptions, AttentionResult, last_token_attention
from ihs.explain.attribution import (
    AttributionOptions,
    AttributionResult,
    TokenAttribution,
    attribute,
    attribute_tokens,
)
from ihs.explain.concepts import (
    ConceptDirections,
    ConceptLibrary,
    ConceptOptions,
    concept_directions,
    direction_cosines,
    tcav,
)
from ihs.explain.faithfulness import (
    BowSaliency,
    FaithfulnessOptions,
    perturbation_curves,
    randomisation_check,
)
from ihs.explain.heatmap import token_heatmap_html
from ihs.explain.targets import LensTarget, ProbeTarget, RefusalTarget, emotion_target, refusal_target
from ihs.explain.tokens import PromptTokens, find_span, marked_spans, tokenize_prompts

__all__ = [
    "AttentionOptions",
    "AttentionResult",
    "AttributionOptions",
    "AttributionResult",
    "BowSaliency",
    "ConceptDirections",
    "ConceptLibrary",
    "ConceptOptions",
    "FaithfulnessOptions",
    "LensTarget",
    "ProbeTarget",
    "PromptTokens",
    "RefusalTarget",
    "TokenAttribution",
    "attribute",
    "attribute_tokens",
    "concept_directions",
    "direction_cosines",
    "emotion_target",
    "find_span",
    "last_token_attention",
    "marked_spans",
    "perturbation_curves",
    "randomisation_check",
    "refusal_target",
    "tcav",
    "token_heatmap_html",
    "tokenize_prompts",
]
