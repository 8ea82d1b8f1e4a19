"""The board's runtime: the LiteRT interpreter seam, the bundle and its variants."""
