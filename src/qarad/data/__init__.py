"""Data layer: image I/O, dataset layouts (MVTec AD, VisA, BTAD, plain folders), resolution policies, streaming."""
from .io import ImageError, read_image, read_mask
from .layouts import LAYOUTS, FolderSplit, list_categories, scan
from .mvtec import DatasetError, Sample, scan_folder, scan_mvtec
from .resolution import Layout, ResolutionPolicy

__all__ = ["ImageError", "read_image", "read_mask", "DatasetError", "Sample", "scan_folder", "scan_mvtec",
           "Layout", "ResolutionPolicy", "LAYOUTS", "FolderSplit", "list_categories", "scan"]
