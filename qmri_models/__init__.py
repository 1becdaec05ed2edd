"""The science of qmri-gadgets: signal models, simulation, reconstruction maths.

Nothing here knows about streams, sockets or gadgets; everything can be called from a notebook.
"""
