"""What a Podium model is: the lecture architectures, the catalog, and the stored-artefact format.

Importing this package (or ``models.catalog`` / ``models.artifacts``) never imports torch, so the
serving path stays torch-free; only ``models.nets`` needs it.
"""
