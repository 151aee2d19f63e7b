"""Stage ``enhance``: an AITQE-style quality enhancer that scores image-caption pairs and rewrites weak ones."""
