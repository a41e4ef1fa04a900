"""Model configs shipped as data (OpenCLIP JSON format)."""
