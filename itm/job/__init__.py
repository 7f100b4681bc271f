"""The job wing: reads the URL list, downloads, hashes and grays on Ray, writes MongoDB."""
