"""`vreason chat`: a terminal app for conversations about a video, saved as they happen."""
