"""The interactive page (``nncompile render MODEL.nn -o model.html``): see :mod:`.builder`."""
from .builder import page_data, page_html, write_page

__all__ = ["page_data", "page_html", "write_page"]
