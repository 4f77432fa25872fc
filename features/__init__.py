"""Feature stores: the on-disk format (Zarr v3 / HDF5), provenance, fingerprint and store tools."""
