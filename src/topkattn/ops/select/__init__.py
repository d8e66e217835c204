"""Top-k selection kernels (indices of the k largest scores per row) and their reference."""
