"""SPARROW for pixel-grounded video LLMs, as a Lightning plug-in kit.

    from sparrow_plugin import SparrowWrapper, list_hosts
    model = SparrowWrapper(base="tiny", host_args={"path": "outputs/tiny/host"})

The names below are imported on first use, so that importing a light submodule (the
``sparrow`` command's dispatcher, the errors) does not import Lightning and torch.
"""

from sparrow_plugin.lazy import lazy_attributes

__all__ = ["SparrowWrapper", "register_host", "list_hosts", "get_host_factory"]
__version__ = "0.1.0"

_LAZY = {
    "SparrowWrapper": "sparrow_plugin.wrapper",
    "register_host": "sparrow_plugin.registry",
    "list_hosts": "sparrow_plugin.registry",
    "get_host_factory": "sparrow_plugin.registry",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
