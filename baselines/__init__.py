"""Host shims: released pixel-grounded video LLMs rebuilt from transformers and sam2 classes.

Each package registers its host by name on import (``baselines.videoglamm`` ->
``"videoglamm"``); :func:`sparrow_plugin.list_hosts` imports them all.
"""
