"""Entry points. Importing this package registers the OmegaConf resolvers the config tree uses."""

from clipforge.utils.hydra import register_resolvers

register_resolvers()
