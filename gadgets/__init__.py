"""Streaming side of qmri-gadgets: the runtime and the gadgets that run on an MRD stream."""
