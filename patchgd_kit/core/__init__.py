"""The core: PatchGD (``patchgd``: Algorithms 1 and 2), the patch grid and its sampling (``patches``), the
models (``models``), GD's step (``gd``), the alternatives (``alternatives``, ``streaming``) and the method
registry that names them all (``methods``). Imports the data floor and the root, never runs or the face."""
