"""Hosts shipped inside the package: the embedded tiny default (real hosts: ``baselines``)."""
