"""The data floor: UltraMNIST's recipe (``digits``), its dataset folders (``ultramnist``), a split's files
checked (``splitfiles``), PANDA's slides (``panda``) and gigapixel images in tiled TIFFs (``tiled``).
Imports only the root (errors, files, progress)."""
