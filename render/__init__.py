"""Pictures: the z-buffer rasteriser, keypoint drawing, sample pictures, HTML pages, model pictures."""
