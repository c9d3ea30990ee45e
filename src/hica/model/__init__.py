"""The HiCA model library: the model and its output (``hica_model``), ROIs, augmentation, in-memory image
data, class text, BatchNorm and stage freezing, and text pooling; shared by methods and jobs.

Kept light on purpose: import the modules (``hica.model.roi``, ``hica.model.hica_model``, ...) directly.
"""
