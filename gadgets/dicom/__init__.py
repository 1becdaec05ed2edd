"""DICOM at the edge of the stream: MRD images to DICOM files, and C-STORE of those files to a DICOM node."""
