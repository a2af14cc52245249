"""The LongVILAJob API: names, types (types.py) and their schema (schema.py)."""

GROUP = "longvila.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LongVILAJob"
PLURAL = "longvilajobs"
SINGULAR = "longvilajob"
SHORT_NAMES = ("lvj",)
