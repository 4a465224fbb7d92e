"""Records -> pixels: label files read into checked records, one decoder, one preprocessing, the cache, loaders."""
