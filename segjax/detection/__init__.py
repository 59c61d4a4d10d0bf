"""Detection operations under jit: boxes, anchors, matching, sampling, NMS and RoIAlign.

Everything here has static shapes: a variable number of boxes is a fixed-size array
with a validity mask, sampling draws fixed counts with `top_k`, and NMS returns a fixed
number of indices with a mask. Boxes are `(x1, y1, x2, y2)` in pixels (torchvision's
convention); images and feature maps are NHWC.
"""
