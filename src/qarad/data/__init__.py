"""Data layer: image I/O, MVTec-layout scanning, resolution policies, streaming."""
from .io import ImageError, read_image, read_mask
from .mvtec import DatasetError, Sample, scan_folder, scan_mvtec
from .resolution import Layout, ResolutionPolicy

__all__ = ["ImageError", "read_image", "read_mask", "DatasetError", "Sample", "scan_folder", "scan_mvtec",
           "Layout", "ResolutionPolicy"]
