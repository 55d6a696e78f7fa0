"""Model card templates (Markdown with YAML front matter and ``${field}`` placeholders).

Filled by :func:`sde_diffusers.hub_utils.render_model_card`; installed as ``sde_diffusers.model_cards``.
"""
