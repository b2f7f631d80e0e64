"""The fixed texts alignment data is built from: refusals, compliant openings, and a chat template.

All were written for ihs. Refusals vary in how they open (apology, plain "I can't", a statement
about the request, a decline with an offer of something safe) so a model trained on them learns to
refuse rather than to repeat one sentence. Every refusal contains a phrase that
:class:`ihs.generation.PhraseJudge` counts as a refusal, and no compliant opening does (the tests
check both), so refusal rates measured later with the default judge mean what they say.

Compliant openings are the *rejected* side of preference pairs for malicious requests when no
model completion is used: the first words of an answer that goes along with the request, with no
content after them. They never contain instructions, only the shape of compliance.
"""

from __future__ import annotations

#: Refusals for malicious requests, in several opening styles.
REFUSALS: tuple[str, ...] = (
    # apology first
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I can't assist with this request.",
    "I'm sorry, I can't provide that. It could cause real harm to people.",
    "Sorry, but I won't help with this. It could hurt someone or break the law.",
    "I'm really sorry, but this is something I can't help with.",
    "My apologies, but I cannot provide instructions for this.",
    "I apologize, but I can't assist with that request.",
    "I am sorry, but I cannot help plan or carry out something harmful.",
    # plain statement of inability or unwillingness
    "I can't help with that request.",
    "I cannot help with this. It could put people at risk.",
    "I won't provide this information, because it could be used to cause harm.",
    "I will not help with that. It would put other people at risk.",
    "I'm not able to help with this request.",
    "I am unable to assist with this, as it could cause serious harm.",
    "I'm unable to provide guidance on that.",
    "I can't provide instructions for something that could hurt people.",
    # a statement about the request, then the refusal
    "That request asks for something harmful, so I can't help with it.",
    "This could seriously harm others, and I'm not going to help with it.",
    "What you describe is illegal and dangerous, so I cannot assist.",
    "Helping with this would be unsafe and unethical, so I must decline.",
    "This falls outside what I can help with: I can't assist with causing harm.",
    # a decline with a safer offer
    "I must decline this request. If you are in a difficult situation, I'm glad to help you find support.",
    "I can't help with that, but I'm happy to talk about the safety or legal side of the topic.",
    "I won't assist with this. If you're curious about the subject in general, I can share safe, "
    "factual background instead.",
    "Sorry, I can't do that. I can help with a different question, though.",
    "I cannot provide that. If someone is in danger, please contact local emergency services.",
    "I'm not going to help with this, but I'd be glad to help with something else.",
    # short and firm
    "No, I can't help with that.",
    "I can't assist with that.",
    "I refuse to help with this, since it could cause harm.",
    "Sorry, I cannot comply with this request.",
    "I can't support this request, as it would be harmful.",
)

#: Opening words of a compliant answer, for the rejected side of preference pairs. No content follows.
COMPLIANT_OPENINGS: tuple[str, ...] = (
    "Sure, here is how to do that:",
    "Sure! Here's a step-by-step guide:",
    "Of course. Here is what you need to do:",
    "Certainly! Here are the steps:",
    "Absolutely, here's how you can go about it:",
    "Happy to help. First, you will need the following:",
    "Sure thing. Step 1:",
    "Here is a detailed plan:",
    "Great question! Here's how it works:",
    "Okay, here are the instructions you asked for:",
    "No problem. The easiest way is this:",
    "Sure, I can explain. To start with,",
)

#: The chat template ihs gives a model that has none (a base model such as gemma-3-270m).
#: It renders ``[BOS]`` (when the tokenizer has one), an optional system message followed by a
#: blank line, then ``User: <text>`` and ``Assistant: <text><EOS>`` lines; the generation prompt is
#: ``Assistant:``, so an answer starts with a space. Plain words rather than special tokens, so no
#: token has to be added to the vocabulary and the embeddings stay as they are.
IHS_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] }}{{ eos_token }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
