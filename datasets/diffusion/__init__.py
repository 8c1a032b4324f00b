"""Text-to-image data: procedural captioned scenes (shapes, colours, positions, textures)."""
