"""recap: extend image-caption data with captions from several captioners, sheared to the raw caption's length."""
