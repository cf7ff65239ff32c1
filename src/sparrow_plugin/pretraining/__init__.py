"""The tiny host's pre-training: what released hosts arrive with, at toy scale.

Real hosts come with a CLIP/InternVideo/Qwen vision tower, a language model that reads
them, and a SAM2 that segments what it is prompted with. The tiny host starts random, and
SPARROW's stage 1 cannot learn all of that in minutes (measured: with random parts the
[SEG] state barely depends on the query, and the tiny SAM2 segments every shape). So the
tiny host gets its own pre-training, in two independent parts that ``make tiny-host``
runs side by side, one CPU thread each (two small processes use the two cores better
than one: 1.4x from a second thread, 2x from a second process), then a third:

- :mod:`~sparrow_plugin.pretraining.tiny_sam2` (:class:`TinySAM2Pretraining`): SAM2's
  promptable segmentation on single synthetic frames, with box and attribute prompts.
- :mod:`~sparrow_plugin.pretraining.tiny_llm` (:class:`TinyHostPretraining`): the video
  LLM's vision tower (dense colour/shape labels) and referring question answering, with
  probes that make the answer position, where SPARROW later reads [SEG], carry the referent.
- :mod:`~sparrow_plugin.pretraining.tiny_grounding` (:class:`TinyGroundingHeadPretraining`),
  run after both: the host's grounding head learns to map that position to the SAM2
  attribute prompt of what the query names.

All three write into one release folder (``sam2.safetensors``, the host files and the
attribute prompts the head is aligned to) that
:meth:`~sparrow_plugin.hosts.tiny.TinyVideoLLM.from_pretrained` reads. What two or more
stages share lives in :mod:`~sparrow_plugin.pretraining.common`.
"""

from sparrow_plugin.pretraining.tiny_grounding import TinyGroundingHeadPretraining, named_attributes
from sparrow_plugin.pretraining.tiny_llm import TinyHostDataModule, TinyHostPretraining
from sparrow_plugin.pretraining.tiny_sam2 import SceneFrameDataModule, TinySAM2Pretraining

__all__ = [
    "TinySAM2Pretraining",
    "SceneFrameDataModule",
    "TinyHostPretraining",
    "TinyHostDataModule",
    "TinyGroundingHeadPretraining",
    "named_attributes",
]
