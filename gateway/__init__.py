"""The HTTP gateway (`medkit serve`): Alertmanager and generic detections in, operator decisions through."""
