"""Reading and writing images, labels and models."""
