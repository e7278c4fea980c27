"""db3d: DreamBooth3D as a research system."""
