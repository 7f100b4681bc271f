"""itm: download the images of a URL list on Ray and keep their MD5 and grayscale in MongoDB."""

__version__ = "0.1.0"
