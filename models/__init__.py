"""medkit's shared vocabulary: pydantic models passed between detectors, workflows and activities.

Nothing here performs I/O or reads the clock: these models are imported into the workflow
sandbox, so every timestamp and identifier is passed in explicitly by the caller.
"""
