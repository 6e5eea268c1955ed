"""The Gateway: the in-process API both transports call, and the one place requests are accounted."""
