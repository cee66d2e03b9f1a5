"""The overlay drawing: each mask tinted and outlined, worked out inside the mask's box."""

import numpy as np
from skimage.segmentation import find_boundaries

from segbench.report.plots import draw_instances, instance_colours
from segbench.types import Instances


def _whole_image_reference(image, masks, scores, alpha):
    # the definition: every mask blended and outlined on the whole image, lowest score first
    out = image.astype(np.float32) / 255.0
    colours = instance_colours(len(masks))
    for i in np.argsort(scores, kind="stable"):
        m = masks[i]
        out[m] = (1 - alpha) * out[m] + alpha * colours[i]
        out[find_boundaries(m, mode="inner")] = colours[i]
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def test_box_local_drawing_equals_the_whole_image_definition():
    rng = np.random.default_rng(0)
    h, w = 61, 83
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    masks = [
        (yy - 30) ** 2 + (xx - 40) ** 2 < 15**2,  # inside, overlapping the next ones
        (yy < 12) & (xx < 20),  # the top-left corner: outline on the image's edges
        (yy > 50) & (xx > 70),  # the bottom-right corner
        (yy - 25) ** 2 + (xx - 45) ** 2 < 6**2,
        np.zeros((h, w), bool),  # empty: drawn as nothing
        rng.random((h, w)) < 0.05,  # scattered pixels over the whole image
    ]
    masks = np.stack(masks)
    scores = np.array([0.9, 0.3, 0.5, 0.95, 0.7, 0.1], np.float32)
    boxes = np.tile([0, 0, w, h], (len(masks), 1))
    inst = Instances((h, w), boxes, np.ones(len(masks)), scores=scores, masks=masks)
    got = draw_instances(image, inst, alpha=0.45)
    assert np.array_equal(got, _whole_image_reference(image, masks, scores, 0.45))
    assert not np.array_equal(got, image)
