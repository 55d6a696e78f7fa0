"""sde-diffusers: score-based generative modeling through SDEs, and Soft Diffusion, for Hugging Face Diffusers."""

from .sde import SDE, VESDE, VPSDE, ReverseSDE, SubVPSDE, get_sde

__version__ = "0.1.0"

__all__ = ["SDE", "VESDE", "VPSDE", "SubVPSDE", "ReverseSDE", "get_sde"]
