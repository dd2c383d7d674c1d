"""Diffusion process: the variance-preserving noise schedule and DDIM timestep sequences."""

from patchscaler.diffusion.schedule import (
    NUM_TRAIN_TIMESTEPS,
    alpha_bar,
    ddim_step_pairs,
    ddim_timesteps,
    make_alphas_cumprod,
)

__all__ = ["NUM_TRAIN_TIMESTEPS", "alpha_bar", "ddim_step_pairs", "ddim_timesteps", "make_alphas_cumprod"]
