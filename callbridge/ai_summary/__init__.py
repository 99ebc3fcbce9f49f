"""The AI summary: a post-call summary written by any OpenAI-compatible LLM.

``schema`` (what the LLM answers and the bridge serves), ``prompt`` (what the LLM is
told, and how a long transcript is cut into parts), ``llm`` (the chat-completions client
and its typed errors), ``summarizer`` (one call's summary: parts, validation, one retry).
"""
