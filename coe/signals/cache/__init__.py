"""The conversation-safe semantic cache: replay an earlier answer to the same question, asked in the
same conversation with the same system prompt, tools, response format and generation settings.

Why conversation-safe: a cache keyed on the last user turn alone replays "and in Python?" from one
conversation into another. Here the whole context is part of the key (``scope``), and only the
wording of the last user turn may differ. See ``runtime`` for the request path, ``matcher`` for when
two wordings count as the same question (``features`` for its guard), ``fitting`` for how the
verifier's threshold is chosen on pairs it never saw, ``store`` for where entries live.
"""
