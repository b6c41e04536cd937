"""DD3G networks: each a diffusers ``ModelMixin, ConfigMixin`` saved with ``save_pretrained``."""
