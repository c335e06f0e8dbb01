"""The runs floor: a run's config (``config``), folder (``runfolder``), training (``training``) over one or
more processes (``distributed``), the results store (``store``), the profiles (``profiles``), the
digits-pretrained backbones (``pretrain``) and a paper row at a profile's scale (``scaling``)."""
