"""ViP2-CLIP on an OpenCLIP backbone: torch only, no Ray, no CLI."""
