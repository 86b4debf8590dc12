"""imagesearch: find photos in your own folders by a dropped image or a typed description."""

__version__ = "0.1.0"
