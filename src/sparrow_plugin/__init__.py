"""SPARROW for pixel-grounded video LLMs, as a Lightning plug-in kit.

    from sparrow_plugin import SparrowWrapper, list_hosts
    model = SparrowWrapper(base="tiny", host_args={"path": "outputs/tiny/host"})
"""

from sparrow_plugin.registry import get_host_factory, list_hosts, register_host
from sparrow_plugin.wrapper import SparrowWrapper

__all__ = ["SparrowWrapper", "register_host", "list_hosts", "get_host_factory"]
__version__ = "0.1.0"
