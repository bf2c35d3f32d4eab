"""Built-in detectors: they watch services and report detections that start or join recoveries."""
