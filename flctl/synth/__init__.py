"""Synthetic magnetic-tile defect dataset in the real dataset's layout, plus Sedna-style label files.

The real dataset (``abin24/Magnetic-tile-defect-datasets.``, 1,344 grayscale JPEG tiles with PNG
masks) cannot ship with this repository, so the demo and the tests generate a stand-in that a
loader cannot tell apart structurally::

    <out>/Magnetic-tile-defect-datasets/MT_<Class>/Imgs/exp<k>_num_<id>.jpg   grayscale JPEG
    <out>/Magnetic-tile-defect-datasets/MT_<Class>/Imgs/exp<k>_num_<id>.png   8-bit mask, 0 = no defect
    <out>/1.txt, <out>/2.txt     one edge's training list each, like Sedna's data/1.txt and 2.txt
    <out>/test.txt               the held-out rest (about 22 %), never seen by an edge

Defects are drawn to be learnable but not trivial for Sedna's small CNN after the 128x128
downscale. Every tile, defective or not, carries the same surface texture (curvature shading,
grinding marks, mottling, noise, vignetting) and, at random, harmless look-alikes (dust specks
resembling tiny pits, a dark straight border resembling a break). Defects are multiplicative
darkening (pits, cracks, chipped-off areas, a ragged frayed band, blotches) scaled by one contrast
knob (`synthesize(contrast=...)`, default `DEFAULT_CONTRAST`), tuned with ``benchmarks/learnability.py``
so that the demo's federated budget (2 edges x 3 rounds x 1 epoch, batch 32, Adam 0.001) reaches a
balanced accuracy of about 0.8-0.95 on ``test.txt``: well above the 0.5 of a model that always answers
"no defect" (accuracy ~0.70), and well below perfect. Everything is a pure function of ``seed``,
``scale``, ``size_range`` and ``contrast``.

    _layout.py     the real dataset's facts (classes, counts, file names) and `SynthReport`
    _surface.py    the defect-free tile surface and the harmless look-alikes
    _defects.py    drawing each defect class
    _generate.py   `synthesize`: one sample's pixels, the images, masks, label files and splits
    _copy.py       `copy_split`: one label file and exactly the images it lists (an edge's share)

numpy and pillow only: ``flctl`` must stay usable on machines without TensorFlow.
"""

from __future__ import annotations

from flctl.synth._copy import copy_split
from flctl.synth._defects import DEFAULT_CONTRAST
from flctl.synth._generate import synthesize
from flctl.synth._layout import CLASS_COUNTS, DATASET_DIRNAME, DEFECT_CLASSES, SPLIT_FILES, SynthReport

__all__ = [
    "CLASS_COUNTS",
    "DATASET_DIRNAME",
    "DEFAULT_CONTRAST",
    "DEFECT_CLASSES",
    "SPLIT_FILES",
    "SynthReport",
    "copy_split",
    "synthesize",
]
