"""Dataset readers (R2Gen layout, Open-i, MIMIC-CXR-JPG), image decoding and the dataset.h5 format."""
