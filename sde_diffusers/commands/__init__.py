"""Sub-commands of the ``sde-diffusers`` CLI (see :mod:`sde_diffusers.cli`)."""
