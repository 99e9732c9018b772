"""Text-branch fixtures live in tests/llm_fixtures.py so pipeline-level tests can use them too."""

from llm_fixtures import CHAT_TEMPLATE, SPECIALS, build_tokenizer, chat_tokenizer_factory, tiny_lm_dir  # noqa: F401
