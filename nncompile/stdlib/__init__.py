"""The standard library of layers, written in the .nn language (``import nn``)."""
