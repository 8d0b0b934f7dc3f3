"""Video and storage I/O: PyAV decode/encode, fsspec paths, atomic writes."""
