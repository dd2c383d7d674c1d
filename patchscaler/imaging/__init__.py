"""Pixels at the edges of the library: the one conversion between tensors, arrays and
PIL images (`convert`, with the one rounding rule), image files with their metadata
(`image_files`) and the group-map picture (`visualize`).

Nothing is imported here: the command imports `image_files` before it needs torch.
"""
