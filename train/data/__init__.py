"""Built-in data sets written as webdataset shards, and loaders that stream them."""
