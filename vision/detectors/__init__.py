"""Detectors behind one small interface (see base.Detector)."""

from vision.detectors.base import Detector

__all__ = ["Detector"]
