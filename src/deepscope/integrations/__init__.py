"""Training-framework adapters around :class:`deepscope.Recorder`.

- :mod:`deepscope.integrations.lightning`: ``DeepscopeCallback`` for Lightning's ``Trainer``;
- :mod:`deepscope.integrations.huggingface`: ``DeepscopeCallback`` for Hugging Face's ``Trainer``.

Each module imports its framework, so import the one you use; ``import deepscope`` imports neither.
"""
