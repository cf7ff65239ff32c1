"""Boxes for grounding tokens: proposals on a frame, and the filtration head's choice
among them (SPARROW's [BOX] prompt).

:class:`BoxGrounding` holds the frozen proposer (from its release) and the trained
filtration head. Proposals are computed on the decoder's own SAM2 features of a frame (the
image features are computed once per frame and shared with mask decoding) or, with
``box.features: separate``, by the release's own image encoder at its size (the authors'
448 px pass). The RoI scorer reads three levels of the decoder's features of that frame:
the mask decoder's two high-resolution projections and the stride-16 map with SAM2's
``no_mem_embed`` added, as SAM2 prompts a conditioning frame (and as the authors read it).
"""

from __future__ import annotations

import torch
from torch import nn

from sparrow_plugin.checkpoints import weight_digests
from sparrow_plugin.config import BoxSettings
from sparrow_plugin.decoder import SAM2VideoDecoder
from sparrow_plugin.errors import CheckpointError, ConfigError
from sparrow_plugin.grounding.filtration import AUTHORS_GAMMA, Filtered, FiltrationConfig, FiltrationHead
from sparrow_plugin.grounding.proposer import Proposals
from sparrow_plugin.grounding.releases import load_proposer_release
from sparrow_plugin.interfaces import ImageFeatures

__all__ = ["BoxGrounding"]


class BoxGrounding(nn.Module):
    """The proposer (frozen) and the filtration head for one SAM2 decoder.

    Args:
        settings: the recipe's ``box`` settings (``proposer`` names the release).
        decoder: the model's SAM2 decoder, whose features the proposer may share and the
            RoI scorer reads.
    """

    def __init__(self, settings: BoxSettings, decoder: SAM2VideoDecoder):
        super().__init__()
        self.settings = settings
        sam = decoder.sam
        release = load_proposer_release(settings.proposer, host_image_encoder=sam.image_encoder, image_size=settings.image_size, **settings.proposer_settings)
        if settings.features == "decoder" and not release.shares_encoder:
            raise ConfigError(
                f"{settings.proposer}: the proposer was trained on another SAM2 image encoder than the host's, so it cannot read "
                "the decoder's features; set box.features: separate (its own encoder, at box.image_size)"
            )
        self.proposer = release.proposer.requires_grad_(False).eval()
        self.separate_features = release.features.requires_grad_(False) if settings.features == "separate" else None
        levels = (sam.sam_mask_decoder.conv_s0.out_channels, sam.sam_mask_decoder.conv_s1.out_channels, sam.hidden_dim)
        self.filtration = FiltrationHead(
            FiltrationConfig(**{"token_dim": decoder.prompt_dim, "proposal_dim": self.proposer.config.d_model, "level_dims": levels, **settings.filtration})
        )

    def load_released_filtration(self, state: dict[str, torch.Tensor], gamma: str, source: str) -> None:
        """The filtration head of a host's release (the authors' sparrow-finetune), strictly;
        ``gamma``: ``as_run`` sets the RoI weight to 0.1, as the authors' inference ran
        (transformers 4.41 renamed the stored ``roi_fusion_gamma`` away), ``stored`` takes it."""
        filtration = self.filtration
        expected = filtration.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
        if missing or unexpected or wrong:
            problem = "its filtration head does not match the one the recipe builds (box.filtration settings?)"
            raise CheckpointError(source, problem + ("; shapes differ: " + ", ".join(wrong) if wrong else ""), missing, unexpected)
        filtration.load_state_dict(state)
        if gamma == "as_run":
            with torch.no_grad():
                filtration.roi_fusion_gamma.fill_(AUTHORS_GAMMA)

    def frozen_digests(self) -> dict[str, str]:
        """Digests of the proposer's weights (and its own image encoder's): a checkpoint of
        the filtration head means something only on the proposals it was trained on."""
        digests = {f"proposer.{k}": v for k, v in weight_digests(self.proposer.state_dict()).items()}
        if self.separate_features is not None:
            digests.update({f"proposer_encoder.{k}": v for k, v in weight_digests(self.separate_features.state_dict()).items()})
        return digests

    def train(self, mode: bool = True):
        super().train(mode)
        self.proposer.eval()  # frozen: no dropout, whatever trains around it
        if self.separate_features is not None:
            self.separate_features.eval()
        return self

    @torch.no_grad()
    def proposals(self, features: ImageFeatures, clips: torch.Tensor, frame_ids: torch.Tensor) -> Proposals:
        """The top proposals of N encoded frames: (clips[n], frame_ids[n])."""
        self._check_encoded(features, clips, frame_ids)
        if self.separate_features is not None:
            maps = self.separate_features(features.frames(clips, frame_ids))
        else:
            maps = features.frame_maps(-1, features.rows[clips, frame_ids])
        return self.proposer.propose(maps)

    def levels(self, features: ImageFeatures, clips: torch.Tensor, frame_ids: torch.Tensor, no_mem_embed: torch.Tensor) -> list[torch.Tensor]:
        """The RoI scorer's three feature levels of N frames, (N, C_l, h_l, w_l) each;
        ``no_mem_embed`` is the decoder's SAM2 parameter (read here, owned there)."""
        self._check_encoded(features, clips, frame_ids)
        rows = features.rows[clips, frame_ids]
        maps = [features.frame_maps(level, rows) for level in range(len(features.sizes))]
        maps[-1] = maps[-1] + no_mem_embed.view(1, -1, 1, 1)
        return maps

    def filter(self, tokens: torch.Tensor, proposals: Proposals, levels: list[torch.Tensor], max_kept: int | None = None) -> Filtered:
        """The filtration head on N tokens (N, C) and their frames' proposals."""
        return self.filtration(tokens, proposals.embeddings, proposals.scores, proposals.boxes, levels, max_kept=max_kept)

    @staticmethod
    def _check_encoded(features: ImageFeatures, clips: torch.Tensor, frame_ids: torch.Tensor) -> None:
        if bool((features.rows[clips, frame_ids] < 0).any()):
            raise ValueError("proposals were asked for frames that encode() did not compute")
