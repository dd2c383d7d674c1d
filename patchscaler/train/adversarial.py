"""The adversarial fine-tune of the `real` GRM (issue 21 item 2): the terms added to distillation.

Distillation alone (`models.losses.DistillLoss`) makes a small GRM the *average* of what
the teacher would paint, which is smoother than the teacher. Three terms push past that,
each with its own weight (0 = off), all on the decoded HR image ``sr`` in [0, 1]:

* ``gan``: a narrow spectral-norm U-Net discriminator (`models.discriminator`) trained
  against the ground-truth HR, with the non-saturating loss; its per-pixel logits say
  where the output does not look like a photo. Weight ~0.1 (as in Real-ESRGAN).
* ``ldl``: the LDL artefact map (`models.losses.artifact_map_loss`), against the teacher's
  output, with the generator's EMA as the stable reference: it damps the flicker a GAN
  adds while leaving stable detail.
* ``fft``: L1 between the spectra of ``sr`` and the teacher's output
  (`models.losses.frequency_loss`), for texture energy.
* ``energy``: L1 between the tile-wise *amplitude* spectra of ``sr`` and the teacher's output
  (`models.losses.texture_energy_loss`): texture energy where the teacher has texture, with no
  penalty for strokes the student cannot place exactly (the complex ``fft`` term has one).
* ``feat``: L1 between ImageNet EfficientNet-Lite0 features of ``sr`` and of the teacher's
  output (`train.perceptual.FeatureLoss`): the perceptual loss Real-ESRGAN trains with, from
  weights that ship in an Apache-2.0 package. Matching the teacher's features (not the
  ground truth's) keeps the target deterministic, as the L1 distillation does.

`AdversarialTerms` owns the discriminator and its optimiser, and saves/restores them
with the trainer's checkpoint.
"""

from __future__ import annotations

import torch
from torch import Tensor

from patchscaler.models.discriminator import UNetDiscriminator
from patchscaler.models.losses import artifact_map_loss, frequency_loss, gan_loss, texture_energy_loss

__all__ = ["AdversarialTerms"]

# Images of each batch the feature loss sees: it costs ~0.3 s an image (forward and
# backward, 192² HR, one core), a GRM step ~2 s for all 16 (train/perceptual.py).
FEATURE_IMAGES = 4
# Tile side of the texture-energy term: 32 HR pixels (8 LR) is local enough to keep texture
# where the teacher put it and long enough to resolve the 2-8 pixel periods of hair and grass.
ENERGY_TILE = 32


class AdversarialTerms:
    """Generator-side loss terms and the discriminator's own update."""

    def __init__(self, gan: float, ldl: float, fft: float, d_channels: int = 16, d_lr: float = 1e-4, bf16: bool = True,
                 feat: float = 0.0, energy: float = 0.0):
        self.w_gan, self.w_ldl, self.w_fft, self.w_feat, self.w_energy, self.bf16 = gan, ldl, fft, feat, energy, bf16
        self.disc = self.features = None
        if feat > 0:
            from patchscaler.train.perceptual import FeatureLoss, available

            ok, why = available()
            if not ok:
                raise SystemExit(f"--feat-weight needs the EfficientNet-Lite0 weights: {why}")
            self.features = FeatureLoss(max_images=FEATURE_IMAGES)
        if gan > 0:
            self.disc = UNetDiscriminator(d_channels).to(memory_format=torch.channels_last)
            self.opt = torch.optim.AdamW(self.disc.parameters(), lr=d_lr, betas=(0.9, 0.99), weight_decay=0.0)

    @property
    def active(self) -> bool:
        return self.w_gan > 0 or self.w_ldl > 0 or self.w_fft > 0 or self.w_feat > 0 or self.w_energy > 0

    def _logits(self, img: Tensor) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16 and img.device.type == "cpu"):
            return self.disc(img.contiguous(memory_format=torch.channels_last)).float()

    def generator_loss(self, sr: Tensor, sr_ema: Tensor | None, teacher: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The weighted terms for the generator's step (``sr_ema`` is needed only with ``ldl``)."""
        loss, parts = sr.new_zeros(()), {}
        if self.w_gan > 0:
            self.disc.requires_grad_(False)  # the generator's step must not train the discriminator
            g = gan_loss(self._logits(sr), real=True)
            loss = loss + self.w_gan * g
            parts["gan"] = g.item()
        if self.w_ldl > 0:
            ldl = artifact_map_loss(sr, sr_ema, teacher)
            loss = loss + self.w_ldl * ldl
            parts["ldl"] = ldl.item()
        if self.w_fft > 0:
            f = frequency_loss(sr, teacher)
            loss = loss + self.w_fft * f
            parts["fft"] = f.item()
        if self.w_energy > 0:
            e = texture_energy_loss(sr, teacher, ENERGY_TILE)
            loss = loss + self.w_energy * e
            parts["energy"] = e.item()
        if self.w_feat > 0:
            f = self.features(sr, teacher)
            loss = loss + self.w_feat * f
            parts["feat"] = f.item()
        return loss, parts

    def discriminator_step(self, real: Tensor, fake: Tensor) -> dict[str, float]:
        """One update of the discriminator: ground truth is real, the generator's (detached) output fake."""
        if self.disc is None:
            return {}
        self.disc.requires_grad_(True)
        d_real = self._logits(real)
        d_fake = self._logits(fake.detach())
        loss = gan_loss(d_real, real=True) + gan_loss(d_fake, real=False)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        # D(x) > 0 says "real": how often it is right on each side, for the log.
        return {"d_loss": loss.item(), "d_real_acc": (d_real > 0).float().mean().item(),
                "d_fake_acc": (d_fake < 0).float().mean().item()}

    def state_dict(self) -> dict:
        return {} if self.disc is None else {"disc": self.disc.state_dict(), "disc_opt": self.opt.state_dict()}

    def load_state_dict(self, ck: dict) -> bool:
        """Restore from a checkpoint that has them; False (fresh discriminator) otherwise."""
        if self.disc is None or "disc" not in ck:
            return False
        self.disc.load_state_dict(ck["disc"])
        self.opt.load_state_dict(ck["disc_opt"])
        return True
