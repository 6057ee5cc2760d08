"""One thin click module per subcommand; each exposes ``command``.

Command modules must not import torch at module level: ``imgcls --help`` imports
them all to show their summaries.
"""
